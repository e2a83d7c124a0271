"""Stage `evaluate@<variant>`: score the best-validation checkpoint once on the test split.

    python -m src.evaluate resnet50

Writes metrics/<variant>.json (test and leak-free test metrics, with the training summary),
the classification report as JSON and text, and the confusion matrix as a DVC plot and a PNG.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from src import plots
from src.config import CLASSES, load_config
from src.data import load_split
from src.engine import Batches, predict
from src.metrics import confusion, report, report_text, test_metrics
from src.models import build_model
from src.train import MODELS_DIR
from src.transforms import resize
from src.utils import autocast_dtype, pick_device, stage_main, torch_load, write_json, write_text

METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")


def load_model(variant, path: Path):
    """The variant's network with the trained weights of checkpoint `path`, in eval mode."""
    ckpt = torch_load(path)
    model = build_model(variant, pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def evaluate_variant(name: str) -> dict:
    cfg = load_config()
    variant = cfg.variant(name)
    device = pick_device(variant.train.device)
    dtype = autocast_dtype(variant.train.precision, device)
    model, _ = load_model(variant, MODELS_DIR / name / "model.pt")
    model.to(device, memory_format=torch.channels_last)
    test = load_split("test")
    batches = Batches(resize(test["images"], variant.image_size), test["labels"], variant.arch,
                      device, dtype, augment=False)
    predictions = predict(model, batches, variant.train.batch_size, device, dtype).argmax(1).numpy()
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
    write_json(out / "confusion.json",
               [{"actual": CLASSES[t], "predicted": CLASSES[p], "file": f}
                for t, p, f in zip(targets, predictions, test["files"])])
    plots.confusion_matrix(confusion(targets, predictions), f"{name}: test", out / "confusion.png")

    summary = json.loads((MODELS_DIR / name / "summary.json").read_text())
    metrics = test_metrics(targets, predictions, leak_free) | {"train": summary}
    write_json(METRICS_DIR / f"{name}.json", metrics)
    return metrics


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a name under `variants` in params.yaml")
    name = parser.parse_args().variant
    m = evaluate_variant(name)
    print(f"{name}: test accuracy {m['test']['accuracy']:.3f}, macro F1 {m['test']['f1_macro']:.3f}, "
          f"weighted F1 {m['test']['f1_weighted']:.3f}; leak-free weighted F1 "
          f"{m['test_leak_free']['f1_weighted']:.3f}")


if __name__ == "__main__":
    main()
