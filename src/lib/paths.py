"""Where every stage reads and writes, relative to the repository root (dvc.yaml says the same)."""
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
SAMPLE_DIR = Path("data/sample")      # the bundled subset of the real dataset
RAW_DIR = Path("data/raw")            # download: Kaggle's layout under Data/
PREPARED_DIR = Path("data/prepared")  # prepare: images.npy, {train,valid,test}.json
MODELS_DIR = Path("models")           # train: <variant>/model.pt
LIVE_DIR = Path("dvclive")            # train: <variant>/plots per epoch, metrics.json
RESUME_DIR = Path(".resume")          # train: interrupted runs; not a DVC output, ignored by Git
METRICS_DIR = Path("metrics")         # evaluate and floor: small JSON files kept in Git
PREDICTIONS_DIR = Path("predictions") # evaluate and floor: per test image, kept in Git
REPORTS_DIR = Path("reports")         # prepare, evaluate, floor, compare
DATA_REPORT_DIR = REPORTS_DIR / "data"
RELEASE_DIR = Path("release")         # release: the shipped model, its metrics and model card
