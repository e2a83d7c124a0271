"""Stage `evaluate@<variant>`: score the best-validation checkpoint once on the test split.

    python -m src.evaluate resnet50

Writes metrics/<variant>.json (test and leak-free test metrics with bootstrap intervals and
calibration, and the training summary) and reports/<variant>/: the classification report as JSON
and text, per-image predictions (the confusion-matrix plot), and images: the confusion matrix,
a reliability diagram and Grad-CAM overlays. Validation data is used only to fit the temperature.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from src import plots
from src.config import CLASSES, load_config
from src.data import load_split
from src.engine import Batches, predict
from src.explain import cam_layer, grad_cam
from src.metrics import (METRICS_DIR, REPORTS_DIR, confusion, expected_calibration_error,
                         fit_temperature, report, report_text, test_metrics, write_predictions)
from src.models import MODELS_DIR, load_checkpoint
from src.transforms import normalize, preset
from src.utils import autocast_dtype, pick_device, stage_main, write_json, write_text


def cam_examples(targets: np.ndarray, predictions: np.ndarray) -> list[int]:
    """A fixed set of test images: per class, the first one predicted right and the first one
    predicted wrong, in file order."""
    chosen = []
    for c in range(len(CLASSES)):
        for right in (True, False):
            hits = np.nonzero((targets == c) & ((predictions == c) == right))[0]
            chosen += hits[:1].tolist()
    return chosen


def write_cams(model, arch, images, targets, device, path: Path) -> None:
    heatmaps, titles = [], []
    for image, target in zip(images, targets):
        x = normalize(image.unsqueeze(0).float().to(device) / 255, arch)
        heatmap, probabilities = grad_cam(model, cam_layer(model, arch), x)
        predicted = int(probabilities.argmax())
        heatmaps.append(heatmap[0].cpu())
        titles.append(f"true {CLASSES[target]}\npredicted {CLASSES[predicted]} "
                      f"p={probabilities[0, predicted]:.2f}")
    plots.cam_grid(images, torch.stack(heatmaps) if heatmaps else torch.zeros(0), titles, path)


def evaluate_variant(name: str) -> dict:
    cfg = load_config()
    variant = cfg.variant(name)
    t = variant.train
    device = pick_device(t.device)
    dtype = autocast_dtype(t.precision, device)
    model, _ = load_checkpoint(MODELS_DIR / name / "model.pt")
    model.to(device, memory_format=torch.channels_last)

    def probabilities_of(images, labels):
        batches = Batches(images, labels, variant.arch, device, dtype)
        return predict(model, batches, t.batch_size, device, dtype)

    valid, test = load_split("valid"), load_split("test")
    valid_images, test_images = preset(valid["images"], variant), preset(test["images"], variant)
    temperature = fit_temperature(
        probabilities_of(valid_images, valid["labels"]).clamp_min(1e-12).log(), valid["labels"])
    probabilities = probabilities_of(test_images, test["labels"])
    scaled = torch.softmax(probabilities.clamp_min(1e-12).log() / temperature, 1)
    probabilities, scaled = probabilities.numpy(), scaled.numpy()
    predictions = probabilities.argmax(1)
    targets, leak_free = test["labels"].numpy(), test["leak_free"].numpy()

    out = REPORTS_DIR / name
    write_json(out / "classification_report.json",
               {"test": report(targets, predictions),
                "test_leak_free": report(targets[leak_free], predictions[leak_free])})
    write_text(out / "classification_report.txt",
               f"{name}: official test split ({len(targets)} images)\n"
               f"{report_text(targets, predictions)}\n"
               f"{name}: leak-free test ({int(leak_free.sum())} images)\n"
               f"{report_text(targets[leak_free], predictions[leak_free])}")
    write_predictions(out / "predictions.json", test, probabilities)
    plots.confusion_matrix(confusion(targets, predictions), f"{name}: test",
                           out / "images/confusion.png")
    plots.reliability_diagram(expected_calibration_error(probabilities, targets),
                              expected_calibration_error(scaled, targets), temperature,
                              f"{name}: test calibration", out / "images/reliability.png")
    chosen = cam_examples(targets, predictions)
    write_cams(model, variant.arch, test_images[chosen],
               targets[chosen], device, out / "images/gradcam.png")

    summary = json.loads((MODELS_DIR / name / "summary.json").read_text())
    metrics = test_metrics(targets, probabilities, leak_free, t.seed, scaled) | {
        "temperature": round(temperature, 4), "train": summary}
    write_json(METRICS_DIR / f"{name}.json", metrics)
    return metrics


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    name = parser.parse_args().variant
    m = evaluate_variant(name)["test"]
    print(f"{name}: test accuracy {m['accuracy']:.3f} {m['ci95']['accuracy']}, macro F1 "
          f"{m['f1_macro']:.3f} {m['ci95']['f1_macro']}, weighted F1 {m['f1_weighted']:.3f} "
          f"{m['ci95']['f1_weighted']}, ECE {m['ece']:.3f}")


if __name__ == "__main__":
    main()
