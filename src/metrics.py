"""Classification metrics as the study reports them, on the full test split and its leak-free part."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from src.config import CLASSES


def report(targets, predictions) -> dict:
    """sklearn's classification report: per class, accuracy, macro and weighted averages."""
    return classification_report(targets, predictions, labels=list(range(len(CLASSES))),
                                 target_names=list(CLASSES), output_dict=True, zero_division=0)


def report_text(targets, predictions) -> str:
    return classification_report(targets, predictions, labels=list(range(len(CLASSES))),
                                 target_names=list(CLASSES), digits=3, zero_division=0)


def headline(rep: dict) -> dict:
    """The few numbers `dvc metrics diff` compares: accuracy, macro and weighted F1, per-class F1."""
    return {"accuracy": round(rep["accuracy"], 4),
            "f1_macro": round(rep["macro avg"]["f1-score"], 4),
            "f1_weighted": round(rep["weighted avg"]["f1-score"], 4),
            "precision_macro": round(rep["macro avg"]["precision"], 4),
            "recall_macro": round(rep["macro avg"]["recall"], 4),
            "f1_per_class": {c: round(rep[c]["f1-score"], 4) for c in CLASSES},
            "support": int(rep["macro avg"]["support"])}


def confusion(targets, predictions) -> np.ndarray:
    return confusion_matrix(targets, predictions, labels=list(range(len(CLASSES))))


def test_metrics(targets: np.ndarray, predictions: np.ndarray, leak_free: np.ndarray) -> dict:
    return {"test": headline(report(targets, predictions)),
            "test_leak_free": headline(report(targets[leak_free], predictions[leak_free]))}
