"""The dataset on disk: Kaggle's folder layout, class names, decoding, letterboxing, duplicates,
and the prepared uint8 tensors that training reads."""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.lib.config import CLASSES, SPLITS
from src.lib.errors import UserError
from src.lib.io import torch_load
from src.lib.paths import PREPARED_DIR

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MIN_SIDE = 16  # smaller images carry no anatomy; they are skipped and reported

# Kaggle's train and valid folders carry the tumour's ___location and stage
# ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"), test's do not ("large.cell.carcinoma").
_CLASS_PREFIXES = {"adenocarcinoma": "adenocarcinoma",
                   "large_cell_carcinoma": "large_cell_carcinoma",
                   "squamous_cell_carcinoma": "squamous_cell_carcinoma",
                   "normal": "normal"}


def normalize_class(folder: str) -> str:
    """Map a class folder name of any split to one of the four labels."""
    key = re.sub(r"[.\- ]+", "_", folder.strip().lower())
    for prefix, label in _CLASS_PREFIXES.items():
        if key == prefix or key.startswith(prefix + "_"):
            return label
    raise UserError(f"unknown class folder '{folder}': expected a name starting with "
                    f"one of {', '.join(_CLASS_PREFIXES)}")


def find_split_root(root: Path) -> Path:
    """The folder holding train/, valid/ and test/: Kaggle's zip puts them under Data/."""
    root = Path(root)
    candidates = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    for folder in candidates:
        if (folder / "train").is_dir():
            missing = [s for s in SPLITS if not (folder / s).is_dir()]
            if missing:
                raise UserError(f"{folder}: no '{missing[0]}' split; Kaggle's layout has "
                                "train/, valid/ and test/ folders")
            return folder
    raise UserError(f"{root}: no 'train' split found; expected Kaggle's layout "
                    "(Data/train, Data/valid, Data/test)")


@dataclass
class RawFile:
    split: str
    label: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.split}/{self.path.parent.name}/{self.path.name}"


def scan_raw(root: Path) -> tuple[list[RawFile], list[dict]]:
    """List the images per split and class; files that are not images are returned as skipped."""
    split_root = find_split_root(root)
    files, skipped = [], []
    for split in SPLITS:
        folders = [p for p in sorted((split_root / split).iterdir()) if p.is_dir()]
        labels = {normalize_class(f.name): f for f in folders}
        missing = [c for c in CLASSES if c not in labels]
        if missing:
            raise UserError(f"{split_root / split}: class '{missing[0]}' is missing; "
                            f"each split needs folders for {', '.join(CLASSES)}")
        for folder in folders:
            label = normalize_class(folder.name)
            for path in sorted(folder.iterdir()):
                entry = RawFile(split, label, path)
                if path.is_dir():
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append({"file": entry.name, "reason": "not an image file"})
                else:
                    files.append(entry)
    return files, skipped


def decode_rgb(path: Path) -> Image.Image:
    """Decode any PNG or JPEG to 8-bit RGB. Transparent pixels become black, like the letterbox
    padding; 16-bit grayscale is rescaled rather than clipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                a = a * (255.0 / a.max()) if a.max() > 0 else a
                im = Image.fromarray(a.round().astype(np.uint8), "L")
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, im.convert("RGBA"))
            im = im.convert("RGB")
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"image is {im.size[0]}x{im.size[1]} pixels, under {MIN_SIDE}")
    return im


def letterbox(im: Image.Image, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the longer side is `size`, then pad with zeros to a
    centred size x size square, as the study did. Returns uint8 HxWx3."""
    w, h = im.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = im.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(canvas)


def pixel_digest(im: Image.Image) -> str:
    """Equal for images with the same size and RGB pixels, whatever their file encoding."""
    return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


def load_split(split: str, prepared_dir: Path = PREPARED_DIR) -> dict:
    """A prepared split: `images` uint8 [N,3,S,S], `labels` int64 [N], `files`, and extras."""
    return torch_load(Path(prepared_dir) / f"{split}.pt")


def balance_weights(labels: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample draw weights and per-class loss weights for the training split.
    oversample: draw every class equally often (the study's weighted sampler);
    class_weights: draw uniformly, weight the loss by inverse class frequency; none: neither."""
    counts = torch.bincount(labels, minlength=len(CLASSES)).clamp(min=1).float()
    inverse = counts.sum() / (len(CLASSES) * counts)
    ones_s, ones_c = torch.ones(len(labels)), torch.ones(len(CLASSES))
    if method == "oversample":
        return inverse[labels], ones_c
    if method == "class_weights":
        return ones_s, inverse
    return ones_s, ones_c
