"""The raw dataset on disk: Kaggle's layout (train/, valid/, test/) or class folders alone, and
the label of each folder from `data.classes`. Free of torch and numpy, so that `download`, which
checks an archive with it, starts in a fraction of a second."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.lib.config import SPLITS, folder_key
from src.lib.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def label_of(folder: Path, classes: dict) -> str | None:
    """The label whose `data.classes` prefixes match a class folder's name; None if none does.
    Kaggle's train and valid folders carry the tumour's ___location and stage
    ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"), test's do not ("large.cell.carcinoma")."""
    key = folder_key(folder.name)
    labels = [label for label, prefixes in classes.items()
              if any(key == p or key.startswith(p + "_") for p in prefixes)]
    if len(labels) > 1:
        raise UserError(f"{folder}: the folder matches data.classes.{labels[0]} and "
                        f"data.classes.{labels[1]}; make their prefixes tell it apart")
    return labels[0] if labels else None


def find_data_root(root: Path, classes: dict) -> tuple[Path, bool]:
    """(the folder holding the data, whether it is split): the first folder with Kaggle's
    train/, valid/ and test/ (the zip puts them under Data/), else the first with class
    folders that `data.classes` names, to be split by `data.split`."""
    root = Path(root)
    candidates = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    for folder in candidates:
        if any((folder / s).is_dir() for s in SPLITS):
            missing = [s for s in SPLITS if not (folder / s).is_dir()]
            if missing:
                raise UserError(f"{folder}: no '{missing[0]}' split; Kaggle's layout has "
                                "train/, valid/ and test/ folders")
            return folder, True
    for folder in candidates:
        if any(p.is_dir() and label_of(p, classes) for p in folder.iterdir()):
            return folder, False
    raise UserError(f"{root}: neither Kaggle's layout (train/, valid/, test/) nor folders "
                    f"named as data.classes says ({', '.join(sorted(classes))})")


@dataclass
class RawFile:
    split: str | None  # None until `prepare` splits data that came without splits
    label: str
    path: Path
    name: str          # relative to the data root, as reports name it


def scan_class_folders(folder: Path, classes: dict, split: str | None, files: list,
                       skipped: list) -> None:
    """Append the images under `folder`'s class folders; other files are skipped with why."""
    labelled = [(sub, label_of(sub, classes))
                for sub in sorted(p for p in folder.iterdir() if p.is_dir())]
    for sub, label in labelled:
        if label is None:
            raise UserError(f"{sub}: the folder matches no label of data.classes; add a prefix "
                            "of its name to the label it holds")
    missing = sorted(set(classes) - {label for _, label in labelled})
    if missing:
        raise UserError(f"{folder}: no folder matches data.classes.{missing[0]} (prefixes: "
                        f"{', '.join(classes[missing[0]])}); fix the entry or the folder names")
    prefix = f"{split}/" if split else ""
    for sub, label in labelled:
        for path in sorted(sub.iterdir()):
            entry = RawFile(split, label, path, f"{prefix}{sub.name}/{path.name}")
            if path.is_dir():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append({"file": entry.name, "reason": "not an image file"})
            else:
                files.append(entry)


def scan_raw(root: Path, classes: dict) -> tuple[list[RawFile], list[dict]]:
    """The images per split (or unsplit) and label; files that are not images, as skipped."""
    data_root, is_split = find_data_root(root, classes)
    files, skipped = [], []
    for split in SPLITS if is_split else (None,):
        scan_class_folders(data_root / split if split else data_root, classes, split, files,
                           skipped)
    return files, skipped
