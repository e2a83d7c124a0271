"""params.yaml, loaded and validated in one place.

Every stage calls `load_config()` first, so a bad value is rejected before any work, with the key
and the allowed values in one line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from src.lib.architectures import ARCHITECTURES
from src.lib.errors import UserError
from src.lib.paths import PARAMS_FILE

# The study's four labels; `data.classes` may name others. Labels are sorted, as torchvision's
# ImageFolder sorts them, so label i is the i-th output of every model.
STUDY_CLASSES = ("adenocarcinoma", "large_cell_carcinoma", "normal", "squamous_cell_carcinoma")
SPLITS = ("train", "valid", "test")


class ConfigError(UserError):
    """A bad value in params.yaml; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    source: str
    kaggle_dataset: str
    archive: str
    max_extract_mb: int
    classes: dict  # label -> tuple of folder-name prefixes
    split: SplitConfig
    groups: str    # file -> group CSV at the data root, used where present

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted(self.classes))


@dataclass(frozen=True)
class SplitConfig:
    """How a folder of class folders without train/valid/test is split."""
    train: float
    valid: float
    test: float
    seed: int


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int
    balance: str
    dicom_window_center: float
    dicom_window_width: float
    near_duplicate_distance: int
    folds: int
    fold: int | None  # None: the data's own train and valid; else 0 .. folds - 1 (checked below)


@dataclass(frozen=True)
class FloorConfig:
    image_size: int
    C: list


@dataclass(frozen=True)
class TrainConfig:
    max_epochs: int
    patience: int
    min_delta: float
    batch_size: int
    lr: float
    weight_decay: float
    draws_per_epoch: int
    augment_views: int
    seed: int
    weights: str
    device: str
    precision: str
    framing: str
    intensity: str
    augment: str
    cache_mb: int
    deterministic: bool
    processes: int


@dataclass(frozen=True)
class VariantConfig:
    """One variant: its architecture plus the `train` defaults with its own overrides applied."""
    name: str
    arch: str
    trainable: str
    image_size: int
    train: TrainConfig


@dataclass(frozen=True)
class Config:
    model: str
    data: DataConfig
    prepare: PrepareConfig
    floor: FloorConfig
    train: TrainConfig
    variants: dict[str, VariantConfig]

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            raise ConfigError(f"unknown variant '{name}': use one of {', '.join(self.variants)}")
        return self.variants[name]


def _typed(cls, raw, key: str):
    """Build dataclass `cls` from dict `raw`, checking that every field is present and typed."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in fields(cls))}")
    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key; "
                          f"allowed: {', '.join(f.name for f in fields(cls))}")
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            raise ConfigError(f"{key}.{f.name}: missing")
        values[f.name] = _check_type(raw[f.name], f.type, f"{key}.{f.name}")
    return cls(**values)


def _check_type(value, type_name: str, key: str):
    # bool is an int in Python; `true` where a number belongs is a mistake, not 1.
    if type_name == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if type_name == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if type_name == "list" and (not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{key}: expected a list of positive numbers, got {value!r}")
    if type_name == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if type_name == "str" and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _one_of(value, allowed, key: str):
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not allowed; use one of {', '.join(allowed)}")


def _at_least(value, minimum, key: str):
    if value < minimum:
        raise ConfigError(f"{key}: {value} is too small; it must be at least {minimum}")


def _check_train(t: TrainConfig, key: str) -> None:
    for name in ("max_epochs", "batch_size", "augment_views", "processes"):
        _at_least(getattr(t, name), 1, f"{key}.{name}")
    _at_least(t.patience, 1, f"{key}.patience")
    _at_least(t.min_delta, 0, f"{key}.min_delta")
    _at_least(t.draws_per_epoch, 0, f"{key}.draws_per_epoch")
    _at_least(t.cache_mb, 0, f"{key}.cache_mb")
    if t.lr <= 0:
        raise ConfigError(f"{key}.lr: {t.lr} must be a positive number (the study used 0.001)")
    _at_least(t.weight_decay, 0, f"{key}.weight_decay")
    _one_of(t.device, ("auto", "cpu", "cuda", "mps"), f"{key}.device")
    if t.batch_size < t.processes:
        raise ConfigError(f"{key}.batch_size: {t.batch_size} cannot be shared by "
                          f"{t.processes} processes (train.processes); use at least one per "
                          "process")
    _one_of(t.precision, ("auto", "fp32", "bf16"), f"{key}.precision")
    _one_of(t.framing, ("letterbox", "body", "body_masked"), f"{key}.framing")
    _one_of(t.intensity, ("as_is", "window"), f"{key}.intensity")
    _one_of(t.augment, ("study", "strong"), f"{key}.augment")  # transforms.AUGMENT
    if t.weights not in ("imagenet", "none") and not t.weights.endswith((".pt", ".pth")) and \
            not re.fullmatch(r"[A-Z][A-Z0-9_]*", t.weights):
        raise ConfigError(f"{key}.weights: '{t.weights}' is not allowed; use imagenet, none, "
                          "torchvision's name for other weights (IMAGENET1K_V2) or the path of a "
                          "state-dict file (.pt or .pth)")


def _variant(name: str, raw, train: TrainConfig, prepared_size: int) -> VariantConfig:
    key = f"variants.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping with arch, trainable and image_size")
    for required in ("arch", "trainable", "image_size"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}: missing")
    arch, trainable, size = raw["arch"], raw["trainable"], raw["image_size"]
    _one_of(arch, tuple(ARCHITECTURES), f"{key}.arch")
    spec = ARCHITECTURES[arch]
    _one_of(trainable, spec.trainable, f"{key}.trainable")
    size = _check_type(size, "int", f"{key}.image_size")
    largest = min(spec.max_size or prepared_size, prepared_size)
    if not spec.min_size <= size <= largest:
        raise ConfigError(f"{key}.image_size: {size} does not fit {arch}; use "
                          f"{spec.min_size} to {largest} (at most prepare.image_size)")
    # Any other key overrides the `train` default of the same name; null keeps the default.
    overrides = {k: v for k, v in raw.items()
                 if k not in ("arch", "trainable", "image_size") and v is not None}
    merged = _typed(TrainConfig, {**train.__dict__, **overrides}, key)
    _check_train(merged, key)
    return VariantConfig(name, arch, trainable, size, merged)


def folder_key(name: str) -> str:
    """A folder name as `data.classes` prefixes are matched against it: lower case, with runs
    of '.', '-' and ' ' read as '_' (Kaggle writes "large.cell.carcinoma" in test and
    "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa" in train)."""
    return re.sub(r"[.\- ]+", "_", name.strip().lower())


def _classes(raw) -> dict[str, tuple[str, ...]]:
    """data.classes: each label -> the folder-name prefixes that mean it (one or a list)."""
    if not isinstance(raw, dict) or len(raw) < 2:
        raise ConfigError("data.classes: expected a mapping of at least two labels to the "
                          "folder-name prefixes that mean them")
    out, owner = {}, {}
    for label, prefixes in raw.items():
        key = f"data.classes.{label}"
        if not isinstance(label, str) or not re.fullmatch(r"[a-z0-9_]+", label):
            raise ConfigError(f"{key}: a label is written in lower-case letters, digits and _")
        prefixes = [prefixes] if isinstance(prefixes, str) else prefixes
        if not isinstance(prefixes, list) or not prefixes or not all(
                isinstance(p, str) and folder_key(p) for p in prefixes):
            raise ConfigError(f"{key}: expected a folder-name prefix or a list of them")
        out[label] = tuple(folder_key(p) for p in prefixes)
        for prefix in out[label]:
            if owner.setdefault(prefix, label) != label:
                raise ConfigError(f"{key}: prefix '{prefix}' is also listed under "
                                  f"data.classes.{owner[prefix]}; give it to one label")
    return out


def _split(raw) -> SplitConfig:
    split = _typed(SplitConfig, raw, "data.split")
    for name in ("train", "valid", "test"):
        if not 0 < getattr(split, name) < 1:
            raise ConfigError(f"data.split.{name}: {getattr(split, name):g} must lie between 0 "
                              "and 1 (each split needs images)")
    total = split.train + split.valid + split.test
    if abs(total - 1) > 1e-6:
        raise ConfigError(f"data.split: train + valid + test = {total:g}, not 1; adjust the "
                          "fractions")
    return split


def parse_config(raw) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: expected a mapping at the top level")
    for key in ("model", "data", "prepare", "floor", "train", "variants"):
        if key not in raw:
            raise ConfigError(f"{key}: missing from params.yaml")
    data = _typed(DataConfig, raw["data"], "data")
    _one_of(data.source, ("kaggle", "local", "sample"), "data.source")
    if data.source == "local" and not data.archive:
        raise ConfigError("data.archive: empty; with data.source=local set it to the zip or "
                          "folder downloaded from Kaggle")
    _at_least(data.max_extract_mb, 1, "data.max_extract_mb")
    data = replace(data, classes=_classes(data.classes), split=_split(data.split))
    prepare = _typed(PrepareConfig, raw["prepare"], "prepare")
    if prepare.dicom_window_width <= 0:
        raise ConfigError(f"prepare.dicom_window_width: {prepare.dicom_window_width:g} must be "
                          "positive (the lung window: 1500)")
    _at_least(prepare.image_size, 32, "prepare.image_size")
    _at_least(prepare.near_duplicate_distance, 0, "prepare.near_duplicate_distance")
    if prepare.near_duplicate_distance > 16:
        raise ConfigError(f"prepare.near_duplicate_distance: {prepare.near_duplicate_distance} "
                          "of 64 bits would join unrelated images; use 0 to 16")
    _one_of(prepare.balance, ("oversample", "class_weights", "none"), "prepare.balance")
    _at_least(prepare.folds, 2, "prepare.folds")
    if prepare.fold is not None and (
            _check_type(prepare.fold, "int", "prepare.fold") not in range(prepare.folds)):
        raise ConfigError(f"prepare.fold: {prepare.fold} is not a fold; use null (the data's own "
                          f"train and valid) or 0 to {prepare.folds - 1} (prepare.folds)")
    floor = _typed(FloorConfig, raw["floor"], "floor")
    _at_least(floor.image_size, 4, "floor.image_size")
    train = _typed(TrainConfig, raw["train"], "train")
    _check_train(train, "train")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ConfigError("variants: expected a mapping of variant names")
    variants = {name: _variant(name, v, train, prepare.image_size)
                for name, v in raw["variants"].items()}
    model = raw["model"]
    _one_of(model, tuple(variants), "model")
    return Config(model, data, prepare, floor, train, variants)


def load_config(path: Path = PARAMS_FILE) -> Config:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the repository root") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_config(raw)
