"""Stage `release`: ship the variant named by `model` in params.yaml.

release/model.pt holds the weights with the labels and preprocessing settings (one file,
torch.load(weights_only=True)); release/metrics.json holds the headline metrics.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from src.compare import read_metrics
from src.config import load_config
from src.train import MODELS_DIR
from src.utils import StageError, atomic_write, stage_main, write_json

RELEASE_DIR = Path("release")


@stage_main
def main() -> None:
    cfg = load_config()
    name = cfg.model
    source = MODELS_DIR / name / "model.pt"
    if not source.exists():
        raise StageError(f"{source}: not found; run `dvc repro train@{name}` first")
    m = read_metrics(name)
    atomic_write(RELEASE_DIR / "model.pt", lambda p: shutil.copyfile(source, p))
    headline = {"model": name, "test_accuracy": m["test"]["accuracy"],
                "test_f1_macro": m["test"]["f1_macro"], "test_f1_weighted": m["test"]["f1_weighted"],
                "leak_free_f1_weighted": m["test_leak_free"]["f1_weighted"]}
    write_json(RELEASE_DIR / "metrics.json", headline)
    print(f"released {name}: test weighted F1 {headline['test_f1_weighted']:.3f}")


if __name__ == "__main__":
    main()
