"""Stage `compare`: the five variants and the floor side by side, with the study's figures.

Writes reports/comparison.md, reports/comparison.csv and reports/comparison.png.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from src import plots
from src.config import load_config
from src.evaluate import METRICS_DIR, REPORTS_DIR
from src.utils import StageError, stage_main, write_text

# Reported on the official test split by the study this project reproduces (accuracy, macro F1,
# weighted F1), keyed by (architecture, trainable part).
STUDY = {("cnn", "all"): (0.565, 0.577, 0.494),
         ("resnet50", "classifier"): (0.714, 0.734, 0.724),
         ("resnet50", "last_block"): (0.895, 0.904, 0.895),
         ("inception_v3", "classifier"): (0.689, 0.716, 0.693),
         ("inception_v3", "last_block"): (0.876, 0.892, 0.873)}

COLUMNS = ["variant", "arch", "trainable", "trainable_params", "total_params", "epochs",
           "best_epoch", "train_seconds", "weights", "val_f1_macro", "test_accuracy",
           "test_f1_macro", "test_f1_weighted", "leak_free_f1_weighted", "study_accuracy",
           "study_f1_macro", "study_f1_weighted"]


def read_metrics(name: str) -> dict:
    path = METRICS_DIR / f"{name}.json"
    if not path.exists():
        raise StageError(f"{path}: not found; run `dvc repro evaluate@{name}` first")
    return json.loads(path.read_text())


def variant_row(variant) -> dict:
    m = read_metrics(variant.name)
    study = STUDY.get((variant.arch, variant.trainable), (None, None, None))
    return {"variant": variant.name, "arch": variant.arch, "trainable": variant.trainable,
            **{k: m["train"][k] for k in ("trainable_params", "total_params", "epochs",
                                           "best_epoch", "train_seconds")},
            "weights": "none" if variant.arch == "cnn" else variant.train.weights,
            "val_f1_macro": round(m["train"]["best"]["val_f1_macro"], 4),
            "test_accuracy": m["test"]["accuracy"], "test_f1_macro": m["test"]["f1_macro"],
            "test_f1_weighted": m["test"]["f1_weighted"],
            "leak_free_f1_weighted": m["test_leak_free"]["f1_weighted"],
            "study_accuracy": study[0], "study_f1_macro": study[1], "study_f1_weighted": study[2]}


def floor_row() -> dict:
    m = read_metrics("floor")
    return {"variant": "floor", "arch": "logistic regression", "trainable": "all",
            "val_f1_macro": m["valid"]["f1_macro"], "test_accuracy": m["test"]["accuracy"],
            "test_f1_macro": m["test"]["f1_macro"], "test_f1_weighted": m["test"]["f1_weighted"],
            "leak_free_f1_weighted": m["test_leak_free"]["f1_weighted"]}


def markdown(rows: list[dict]) -> str:
    def cell(v):
        if v is None or v == "":
            return "-"
        return f"{v:,}" if isinstance(v, int) else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@stage_main
def main() -> None:
    cfg = load_config()
    rows = [variant_row(v) for v in cfg.variants.values()] + [floor_row()]
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(REPORTS_DIR / "comparison.csv", out.getvalue())
    write_text(REPORTS_DIR / "comparison.md",
               "# Five variants on the official test split (315 images)\n\n"
               "test_*: this pipeline; leak_free_*: test images with no copy in train or valid; "
               "study_*: the figures the study reports. The floor is a class-balanced logistic "
               "regression on 32x32 grayscale pixels.\n\n" + markdown(rows))
    plots.comparison_chart(rows, REPORTS_DIR / "comparison.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
