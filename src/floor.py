"""Stage `floor`: a class-balanced logistic regression on small grayscale pixels.

Not a model anyone should use: the level any variant has to beat to show it learned more than
global intensity and framing. Its regularization is chosen on valid; test is scored once.
"""
from __future__ import annotations

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from src.lib.config import load_config
from src.lib.data import load_split
from src.lib.device import seed_everything
from src.lib.errors import command
from src.lib.io import write_json
from src.lib.metrics import headline, report, test_metrics, write_predictions
from src.lib.paths import METRICS_DIR
from src.lib.transforms import resize


def pixels(split: dict, size: int) -> np.ndarray:
    """[N, size*size] grayscale in [0,1], read a chunk of images at a time."""
    parts = [(resize(chunk, size).float().mean(1) / 255).flatten(1).numpy()
             for _, chunk in split["images"].chunks()]
    return np.concatenate(parts) if parts else np.zeros((0, size * size), np.float32)


@command
def main() -> None:
    cfg = load_config()
    seed_everything(cfg.train.seed)
    train, valid, test = (load_split(s) for s in ("train", "valid", "test"))
    classes, size = test["classes"], cfg.floor.image_size
    train_pixels, valid_pixels = pixels(train, size), pixels(valid, size)
    best = None
    for C in cfg.floor.C:
        classifier = make_pipeline(StandardScaler(), LogisticRegression(
            C=C, class_weight="balanced", max_iter=5000))
        classifier.fit(train_pixels, train["labels"].numpy())
        val = headline(report(valid["labels"].numpy(), classifier.predict(valid_pixels), classes),
                       classes)
        print(f"floor: C={C} valid macro F1 {val['f1_macro']:.3f}")
        if best is None or val["f1_macro"] > best[1]["f1_macro"]:
            best = (classifier, val, C)
    classifier, val, C = best
    probabilities = classifier.predict_proba(pixels(test, size))
    metrics = test_metrics(test["labels"].numpy(), probabilities, test["leak_free"].numpy(),
                           classes, seed=cfg.train.seed, groups=test["groups"])
    metrics |= {"valid": val, "C": C}
    write_predictions("floor", test, probabilities)
    write_json(METRICS_DIR / "floor.json", metrics)
    print(f"floor: test weighted F1 {metrics['test']['f1_weighted']:.3f}, leak-free "
          f"{metrics['test_leak_free']['f1_weighted']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
