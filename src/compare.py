"""Stage `compare`: the five variants and the floor side by side, with the study's figures.

Writes reports/comparison.md, reports/comparison.csv and reports/comparison.png. Every test
figure comes with its bootstrap 95% interval; McNemar's test pairs each model's predictions with
those of the released one (`model` in params.yaml) image by image, and Holm's adjustment
corrects its p-values for testing every model at once.
"""
from __future__ import annotations

import csv
import io
import sys

import numpy as np

from src.lib import plots
from src.lib.architectures import ARCHITECTURES
from src.lib.config import STUDY_CLASSES, load_config
from src.lib.errors import UserError, command
from src.lib.io import markdown_table, write_text
from src.lib.metrics import format_p, holm, mcnemar, read_metrics, read_predictions
from src.lib.paths import PREDICTIONS_DIR, REPORTS_DIR

# Reported on the official test split by the study this project reproduces (accuracy, macro F1,
# weighted F1), keyed by (architecture, trainable part); shown only for the study's classes.
STUDY = {("cnn", "all"): (0.565, 0.577, 0.494),
         ("resnet50", "classifier"): (0.714, 0.734, 0.724),
         ("resnet50", "last_block"): (0.895, 0.904, 0.895),
         ("inception_v3", "classifier"): (0.689, 0.716, 0.693),
         ("inception_v3", "last_block"): (0.876, 0.892, 0.873)}
SCORES = ("accuracy", "f1_macro", "f1_weighted")


def row(name: str, m: dict, **extra) -> dict:
    """One table row from metrics/<name>.json (`m`)."""
    out = {"variant": name, **extra, "support": m["test"]["support"],
           "leak_free_support": m["test_leak_free"]["support"]}
    for part, key in (("test", "test"), ("test_leak_free", "leak_free")):
        for score in SCORES:
            out[f"{key}_{score}"] = m[part][score]
            out[f"{key}_{score}_low"] = m[part][f"{score}_ci95_low"]
            out[f"{key}_{score}_high"] = m[part][f"{score}_ci95_high"]
        out[f"{key}_ece"] = m[part]["ece"]
        out[f"{key}_ece_scaled"] = m[part].get("ece_scaled")
    return out


def paired(name: str, released: str) -> tuple[dict, np.ndarray]:
    """`name`'s test predictions and the released model's on the same images, matched by
    file; two lists of different images are refused."""
    ours, theirs = read_predictions(name), read_predictions(released)
    if len(set(ours["files"])) != len(ours["files"]) or \
            sorted(ours["files"]) != sorted(theirs["files"]):
        raise UserError(f"{PREDICTIONS_DIR}/{name}.json and {PREDICTIONS_DIR}/{released}.json "
                        "do not list the same test images; rerun both "
                        f"evaluations on the same data (`dvc repro evaluate@{name} "
                        f"evaluate@{released}`)")
    position = {f: i for i, f in enumerate(theirs["files"])}
    return ours, theirs["predictions"][[position[f] for f in ours["files"]]]


def add_mcnemar(rows: list[dict], released: str) -> None:
    """Each row's McNemar p-value against the released model, on the whole test split and on its
    leak-free part, raw and Holm-adjusted over the rows tested (the released model is not)."""
    others = [r for r in rows if r["variant"] != released]
    for key in ("", "leak_free_"):
        raw = []
        for r in others:
            ours, theirs = paired(r["variant"], released)
            part = ours["leak_free"] if key else np.ones(len(theirs), dtype=bool)
            raw.append(mcnemar(ours["targets"][part], ours["predictions"][part],
                               theirs[part])["p_value"])
        for r, p, adjusted in zip(others, raw, holm(raw)):
            r[f"{key}mcnemar_p_vs_released"] = p
            r[f"{key}mcnemar_p_holm"] = adjusted


def variant_row(variant) -> dict:
    m = read_metrics(variant.name)
    same_task = tuple(m["test"]["f1_per_class"]) == STUDY_CLASSES
    study = STUDY.get((variant.arch, variant.trainable)) if same_task else None
    study = study or (None, None, None)
    return row(variant.name, m, arch=variant.arch, trainable=variant.trainable,
               weights=variant.train.weights if ARCHITECTURES[variant.arch].weights else "none",
               **{k: m["train"][k] for k in ("trainable_params", "total_params", "epochs",
                                              "best_epoch", "train_seconds")},
               val_f1_macro=round(m["train"]["best"]["val_f1_macro"], 4),
               **{f"study_{s}": v for s, v in zip(SCORES, study)})


def floor_row() -> dict:
    m = read_metrics("floor")
    return row("floor", m, arch="logistic regression", trainable="all",
               val_f1_macro=m["valid"]["f1_macro"])


def markdown(rows: list[dict], released: str) -> str:
    def num(v, digits=3):
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.{digits}f}"

    def ci(r, key):
        return f"{num(r[key])} ({num(r[key + '_low'], 2)}-{num(r[key + '_high'], 2)})"

    header = ["variant", "trains", "trainable / total params", "epochs (best)", "train s",
              "val macro F1", "test accuracy", "test macro F1", "test weighted F1",
              "leak-free weighted F1", "ECE (scaled)", f"McNemar p vs {released} (leak-free)",
              "Holm-adjusted p (leak-free)", "study acc / macro / weighted F1"]
    table = []
    for r in rows:
        params = f"{num(r.get('trainable_params'))} / {num(r.get('total_params'))}" \
            if r.get("total_params") else "-"
        epochs = f"{r['epochs']} ({r['best_epoch']})" if r.get("epochs") else "-"
        study = " / ".join(num(r.get(f"study_{s}")) for s in SCORES) \
            if r.get("study_accuracy") else "-"
        table.append([
            r["variant"], r["trainable"], params, epochs, num(r.get("train_seconds"), 0),
            num(r["val_f1_macro"]), ci(r, "test_accuracy"), ci(r, "test_f1_macro"),
            ci(r, "test_f1_weighted"), ci(r, "leak_free_f1_weighted"),
            f"{num(r['test_ece'])} ({num(r['test_ece_scaled'])})",
            *(["released"] * 2 if r["variant"] == released else
              [f"{format_p(r[f'mcnemar_{p}'])} ({format_p(r[f'leak_free_mcnemar_{p}'])})"
               for p in ("p_vs_released", "p_holm")]),
            study])
    return markdown_table(header, table)


@command
def main() -> None:
    cfg = load_config()
    rows = [variant_row(v) for v in cfg.variants.values()] + [floor_row()]
    add_mcnemar(rows, cfg.model)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(REPORTS_DIR / "comparison.csv", out.getvalue())
    table = markdown(rows, cfg.model)
    write_text(REPORTS_DIR / "comparison.md",
               f"# {len(cfg.variants)} variants on the test split ({rows[0]['support']} "
               f"images, {rows[0]['leak_free_support']} of them leak-free)\n\n"
               "Test figures with bootstrap 95% intervals (1000 resamples). Leak-free: the test "
               "images with no copy in train or valid. ECE: expected calibration error on test, "
               "in brackets after temperature scaling fitted on valid. McNemar: exact test of "
               "each model against the released one on the same test images, and Holm's "
               "adjustment of those p-values for testing every model at once. Study: the "
               "figures the study reports (for its four classes only). The floor is a "
               "class-balanced logistic regression on 32x32 grayscale pixels.\n\n" + table)
    plots.comparison_chart(rows, REPORTS_DIR / "comparison.png")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
