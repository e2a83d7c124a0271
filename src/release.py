"""Stage `release`: ship the variant named by `model` in params.yaml.

release/model.pt holds the weights with the labels and preprocessing settings, and the
temperature and out-of-distribution threshold that `evaluate` fitted on validation (one file,
torch.load(weights_only=True)); release/metrics.json the headline metrics that `dvc exp show`
displays; release/MODEL_CARD.md what the model is for, what it was trained on and how well it
does, with its known problems.
"""
from __future__ import annotations

import sys

from src.lib.architectures import ARCHITECTURES
from src.lib.checkpoint import save_calibrated
from src.lib.config import STUDY_CLASSES, load_config
from src.lib.errors import command
from src.lib.io import markdown_table, not_found, read_json, write_json, write_text
from src.lib.metrics import read_metrics, with_interval
from src.lib.paths import DATA_REPORT_DIR, MODELS_DIR, RELEASE_DIR

# What `train.framing` and `train.intensity` do, for the model card.
FRAMING = {"letterbox": "",
           "body": "crop to the body's bounding box stretched to the square, ",
           "body_masked": "crop to the body's bounding box stretched to the square with what is "
                          "not body blacked out, "}
WINDOW = {"as_is": "", "window": "map the body's 1st-99th gray percentiles to 0-255, "}


# What is known about the study's dataset, beyond what the data report counts.
KAGGLE_PROBLEMS = """
- the `normal` class carries shortcut cues (text overlays, watermarks) and is nearly all
  duplicates: its high scores say little;
- the validation split is tiny, so one image moves validation accuracy by over a point;
- the test split is framed and exposed differently from train and valid (darker, lower aspect
  ratio, tighter framing), so validation scores do not predict test scores."""


def data_section(data: dict) -> str:
    train_counts = ", ".join(f"{c} {n}" for c, n in data["counts_prepared"]["train"].items())
    dup = data["duplicates"]
    study = tuple(data["classes"]) == STUDY_CLASSES
    source = ('Kaggle "Chest CT-Scan images" (mohamedhanyyy/chest-ctscan-images, CC0), official '
              "splits." if study else "The dataset named by `data` in params.yaml.")
    return f"""{source}
Training images after cleaning: {train_counts}. Known problems, handled as follows:
- duplicates: {dup.get('duplicate_groups', 0)} groups of identical images
  ({dup.get('duplicate_files', 0)} files) and {dup.get('near_duplicate_pairs', 0)} pairs within the
  near-duplicate distance; of the {dup.get('groups', 0)} groups they and patients form,
  {dup.get('cross_split_groups', 0)} crossed splits: every train or valid member of a group with
  a test image was removed, and identical images with conflicting labels
  ({dup.get('conflicting_label_groups', 0)}) dropped;{
    KAGGLE_PROBLEMS if study else ""}"""


def model_card(name: str, variant, metrics: dict, data: dict) -> str:
    t, arch = variant.train, ARCHITECTURES[variant.arch]
    table = markdown_table(
        ["test set", "images", "accuracy", "macro F1", "weighted F1", "ECE raw / scaled"],
        [[label, m["support"], *(with_interval(m, s) for s in ("accuracy", "f1_macro",
                                                               "f1_weighted")),
          f"{m['ece']:.3f} / {m['ece_scaled']:.3f}"]
         for label, m in (("official test split", metrics["test"]),
                          ("leak-free test", metrics["test_leak_free"]))])
    per_class = ", ".join(f"{c} {f:.2f}" for c, f in metrics["test"]["f1_per_class"].items())
    return f"""# Model card: {name}

## Intended use
Research on chest CT slice classification ({", ".join(c.replace("_", " ") for c in
data["classes"])}): reproducing and comparing methods. **Not for diagnosis** or any clinical
decision: the model has not been validated on any clinical population.

## Model
{variant.arch}, trains `{variant.trainable}` ({metrics['train']['trainable_params']:,} of
{metrics['train']['total_params']:,} parameters); initial weights: `{t.weights if
arch.weights else 'none (from scratch)'}`. Adam, lr {t.lr}, batch {t.batch_size}, at most
{t.max_epochs} epochs, stopped after {t.patience} epochs without a validation loss {t.min_delta}
below the best; ran
{metrics['train']['epochs']} epochs, checkpoint of epoch {metrics['train']['best_epoch']}
(chosen on validation only). Seed {t.seed}.

## Data
{data_section(data)}

## Preprocessing
Decode to RGB (transparency over black), letterbox to {data['image_size']}x{data['image_size']}
(aspect kept, zero padding), {FRAMING[t.framing]}{WINDOW[t.intensity]}resize to
{variant.image_size}x{variant.image_size}, scale to [0,1],
{'grayscale, ' if arch.grayscale else ''}normalize per channel as the checkpoint file
states. `python -m src.predict` applies exactly this.

## Metrics
Test split scored once. Intervals: bootstrap, 1000 resamples. ECE: expected calibration error,
raw / after temperature scaling (T = {metrics['temperature']:.3g}, fitted on valid). The shipped
model gives the scaled probabilities (`predict --raw`: the softmax), and flags an input whose
energy (-logsumexp of the logits) is above {metrics['ood']['energy_threshold']:.3g}, the 95th
percentile on valid, as unlike the training data ({metrics['ood']['test_flagged']:.0%} of test
images were).

{table}
Per-class F1 on the official test split: {per_class}.

## Limitations
Single 2D slices: without patient identifiers, slices of one patient that are not near-duplicates
may sit in several splits; no external validation; intervals reflect the test
sample only, not training variability (docs/cnn-robustness.md has runs over several seeds);
calibration is measured on {metrics['test']['support']} images.
"""


@command
def main() -> None:
    cfg = load_config()
    name = cfg.model
    source = MODELS_DIR / name / "model.pt"
    if not source.exists():
        raise not_found(source)
    metrics = read_metrics(name)
    data = read_json(DATA_REPORT_DIR / "report.json")
    save_calibrated(source, RELEASE_DIR / "model.pt", temperature=metrics["temperature"],
                    energy_threshold=metrics["ood"]["energy_threshold"])
    test = metrics["test"]
    headline = {"model": name, "test_accuracy": test["accuracy"],
                "test_f1_macro": test["f1_macro"], "test_f1_weighted": test["f1_weighted"],
                "test_f1_weighted_ci95_low": test["f1_weighted_ci95_low"],
                "test_f1_weighted_ci95_high": test["f1_weighted_ci95_high"],
                "leak_free_f1_weighted": metrics["test_leak_free"]["f1_weighted"]}
    write_json(RELEASE_DIR / "metrics.json", headline)
    write_text(RELEASE_DIR / "MODEL_CARD.md", model_card(name, cfg.variant(name), metrics, data))
    print(f"released {name}: test weighted F1 {headline['test_f1_weighted']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
