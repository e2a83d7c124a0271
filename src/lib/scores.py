"""Accuracy and F1 from confusion matrices, in numpy alone: the one definition that training's
per-epoch curves and the reports' bootstrap intervals share. Apart from `metrics`, so that a
change to how reports are written does not retrain every variant."""
from __future__ import annotations

import numpy as np


def confusion(targets, predictions, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows the true class, columns the predicted one."""
    codes = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(predictions)
    return np.bincount(codes, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> np.ndarray:
    """[..., C, C] confusion matrices -> [..., 3]: accuracy, macro F1, weighted F1 (sklearn's
    definitions, a class without support or predictions scoring F1 0)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support, predicted = cm.sum(-1), cm.sum(-2)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    n = support.sum(-1)
    accuracy = tp.sum(-1) / n
    macro = f1.mean(-1)  # over every label, as `report` asks sklearn for
    weighted = (f1 * support).sum(-1) / n
    return np.stack([accuracy, macro, weighted], -1)
