"""The checkpoint format, owned here alone: `train` saves it, `release` copies it, and evaluate,
predict and bench load it. One file holds the weights and everything needed to use them (labels
and preprocessing), readable with torch.load(weights_only=True). Also the one safe way to write
and read any torch file (train's resume state too)."""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from src.lib.architectures import ARCHITECTURES
from src.lib.config import VariantConfig
from src.lib.errors import UserError
from src.lib.io import atomic_write, not_found
from src.lib.models import network

FORMAT_VERSION = 2  # 2: the dataset's own classes and the DICOM window
FIELDS = ("format_version", "state_dict", "variant", "arch", "trainable", "image_size",
          "prepared_size", "dicom_window", "framing", "intensity", "precision", "classes", "mean",
          "std", "grayscale")


def torch_save(path: Path, obj) -> None:
    """Serialized in memory, then written as bytes: torch.save writing a file itself reports a
    full disk as its own RuntimeError ("unexpected pos ..."), a plain write as ENOSPC."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda p: p.write_bytes(buffer.getbuffer()))


def torch_load(path: Path):
    """Tensors and plain containers only (weights_only): a checkpoint cannot run code."""
    if not Path(path).exists():
        raise not_found(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or holding code
        raise UserError(f"{path}: not a file this project wrote ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]})") from None


def save_checkpoint(path: Path, variant: VariantConfig, state_dict: dict, train: dict) -> None:
    """The weights with the labels and preprocessing of the training split `train` (as
    `prepare` wrote it: DICOM window, letterbox size) and of the variant (frame and resize to
    `image_size`, normalize), and its precision setting, which the machine that loads it
    resolves as training did (`auto`: bfloat16 where it is fast)."""
    t, arch = variant.train, ARCHITECTURES[variant.arch]
    torch_save(path, {"format_version": FORMAT_VERSION, "state_dict": state_dict,
                      "variant": variant.name, "arch": variant.arch,
                      "trainable": variant.trainable, "image_size": variant.image_size,
                      "prepared_size": train["image_size"],
                      "dicom_window": train["dicom_window"], "framing": t.framing,
                      "intensity": t.intensity, "precision": t.precision,
                      "classes": train["classes"], "mean": list(arch.mean), "std": list(arch.std),
                      "grayscale": arch.grayscale})


def save_calibrated(source: Path, path: Path, *, temperature: float,
                    energy_threshold: float) -> None:
    """The checkpoint at `source` with what `evaluate` fitted on validation: the temperature its
    logits are divided by before the softmax, and the energy above which an input is flagged as
    unlike the training data (inference.energy). `predict` uses both when present."""
    torch_save(path, torch_load(source) | {"temperature": temperature,
                                           "energy_threshold": energy_threshold})


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """(the network in eval mode, the checkpoint's settings); an old or foreign file is one line
    naming what it lacks."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a checkpoint of this project; make one with "
                        "`dvc repro train@<variant>`")
    missing = [f for f in FIELDS if f not in ckpt]
    if missing:
        raise UserError(f"{path}: not a checkpoint of this project, or an older format (no "
                        f"'{missing[0]}'); retrain it with `dvc repro train@<variant>`")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {ckpt['format_version']}, this code reads "
                        f"{FORMAT_VERSION}; retrain it with `dvc repro train@{ckpt['variant']}`")
    model = network(ckpt["arch"], ckpt["image_size"], len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit a {ckpt['arch']} at "
                        f"{ckpt['image_size']} px ({str(e).splitlines()[0]})") from None
    return model.eval(), ckpt
