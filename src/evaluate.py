"""Stage `evaluate@<variant>`: score the best-validation checkpoint once on the test split.

    python -m src.evaluate resnet50

Writes metrics/<variant>.json (test and leak-free test metrics with bootstrap intervals and
calibration, and the summary train logged with DVCLive) and reports/<variant>/: the
classification report as JSON and text, per-image predictions (the confusion-matrix plot), and
images: the confusion matrix, a reliability diagram and Grad-CAM overlays. Validation data is
used only to fit the temperature and the out-of-distribution threshold, which `release` puts
into the shipped checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from src.lib import plots
from src.lib.config import load_config
from src.lib.data import load_split
from src.lib.device import environment
from src.lib.errors import command
from src.lib.inference import (
    classify, classify_prepared, energy, energy_threshold, framing, load_classifier
)
from src.lib.io import read_json, write_json, write_text
from src.lib.metrics import (
    expected_calibration_error, fit_temperature, report, report_text, test_metrics, with_interval,
    write_predictions
)
from src.lib.paths import LIVE_DIR, METRICS_DIR, MODELS_DIR, REPORTS_DIR
from src.lib.scores import confusion


def cam_examples(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[int]:
    """A fixed set of test images: per class, the first one predicted right and the first one
    predicted wrong, in file order."""
    chosen = []
    for c in range(num_classes):
        for right in (True, False):
            hits = np.nonzero((targets == c) & ((predictions == c) == right))[0]
            chosen += hits[:1].tolist()
    return chosen


def write_cams(clf, images, targets, path: Path) -> None:
    logits, heatmaps = classify(clf, images, cam=True)
    classes = clf.settings["classes"]
    titles = [f"true {classes[target]}\npredicted {classes[int(p.argmax())]} p={p.max():.2f}"
              for target, p in zip(targets, logits.softmax(1))]
    plots.cam_grid(images, heatmaps, titles, path)


def evaluate_variant(name: str) -> dict:
    cfg = load_config()
    variant = cfg.variant(name)
    clf = load_classifier(MODELS_DIR / name / "model.pt", variant.train.device)
    valid, test = load_split("valid"), load_split("test")
    classes = test["classes"]
    valid_logits = classify_prepared(clf, valid["images"])
    temperature = fit_temperature(valid_logits, valid["labels"])
    threshold = energy_threshold(valid_logits)
    logits = classify_prepared(clf, test["images"])
    probabilities, scaled = logits.softmax(1).numpy(), (logits / temperature).softmax(1).numpy()
    predictions = probabilities.argmax(1)
    targets, leak_free = test["labels"].numpy(), test["leak_free"].numpy()

    out = REPORTS_DIR / name
    write_json(out / "classification_report.json",
               {"test": report(targets, predictions, classes),
                "test_leak_free": report(targets[leak_free], predictions[leak_free], classes)})
    write_text(out / "classification_report.txt",
               f"{name}: official test split ({len(targets)} images)\n"
               f"{report_text(targets, predictions, classes)}\n"
               f"{name}: leak-free test ({int(leak_free.sum())} images)\n"
               f"{report_text(targets[leak_free], predictions[leak_free], classes)}")
    write_predictions(name, test, probabilities, scaled)
    plots.confusion_matrix(confusion(targets, predictions, len(classes)), classes,
                           f"{name}: test", out / "images/confusion.png")
    plots.reliability_diagram(expected_calibration_error(probabilities, targets),
                              expected_calibration_error(scaled, targets),
                              temperature=temperature, title=f"{name}: test calibration",
                              path=out / "images/reliability.png")
    chosen = cam_examples(targets, predictions, len(classes))
    write_cams(clf, test["images"].framed(chosen, **framing(clf)), targets[chosen],
               out / "images/gradcam.png")

    metrics = test_metrics(targets, probabilities, leak_free, classes, seed=variant.train.seed,
                           groups=test["groups"], scaled=scaled) | {
        "temperature": temperature,  # unrounded: release ships it, predict divides by it
        "ood": {"energy_threshold": threshold,
                "test_flagged": round(float((energy(logits) > threshold).float().mean()), 4)},
        "evaluate": environment(clf.device, clf.dtype),
        "train": read_json(LIVE_DIR / name / "metrics.json")}  # train's DVCLive summary
    write_json(METRICS_DIR / f"{name}.json", metrics)
    return metrics


@command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    name = parser.parse_args().variant
    m = evaluate_variant(name)["test"]
    print(f"{name}: test " + ", ".join(f"{label} {with_interval(m, score)}" for label, score in (
        ("accuracy", "accuracy"), ("macro F1", "f1_macro"), ("weighted F1", "f1_weighted")))
        + f", ECE {m['ece']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
