"""One inference path: a checkpoint and images (files or prepared tensors) -> logits, with the
variant's framing, precision and memory format. `evaluate`, `predict`, their Grad-CAM overlays
and `tools/bench.py` all call it, so that on the same device predict prints for an image what
evaluate scored. Logits, not probabilities: the temperature fit needs how sure a wrong answer
was, which the log of a probability loses once it rounds to zero or is clamped."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from src.lib.checkpoint import load_checkpoint
from src.lib.data import decode_image, letterbox
from src.lib.device import autocast, autocast_dtype, pick_device
from src.lib.explain import cam_layer, grad_cam
from src.lib.transforms import model_input, preset

BATCH_SIZE = 32  # fixed, so that evaluate and predict run the same batches in reduced precision


@dataclass(frozen=True)
class Classifier:
    model: nn.Module
    settings: dict  # the checkpoint without its weights: labels, preprocessing, precision
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None is float32


def load_classifier(path: Path, device: str = "auto") -> Classifier:
    model, ckpt = load_checkpoint(path)
    where = pick_device(device)
    model.to(where, memory_format=torch.channels_last)
    settings = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return Classifier(model, settings, where, autocast_dtype(ckpt["precision"], where))


def framing(clf: Classifier) -> dict:
    """The variant's framing settings, as transforms.preset and PreparedImages.framed take them."""
    s = clf.settings
    return {"framing": s["framing"], "intensity": s["intensity"], "size": s["image_size"]}


def read_image(clf: Classifier, path: Path) -> torch.Tensor:
    """An image file -> uint8 [3,size,size]: `prepare`'s decoding and letterbox, then the
    variant's framing. Raises what the decoder raises for a file that is not a usable image."""
    if not Path(path).is_file():
        raise ValueError("no such file")
    s = clf.settings
    square = torch.from_numpy(letterbox(decode_image(path, s["dicom_window"]), s["prepared_size"]))
    return preset(square.permute(2, 0, 1).contiguous()[None], **framing(clf))[0]


def classify(clf: Classifier, images: torch.Tensor, cam: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Framed uint8 images [N,3,H,W] -> (logits float32 [N,C], Grad-CAM heatmaps [N,H,W] for the
    predicted class when `cam`, else None)."""
    arch = clf.settings["arch"]
    logits, heatmaps = [], []
    for start in range(0, len(images), BATCH_SIZE):
        x = model_input(images[start:start + BATCH_SIZE].to(clf.device), arch)
        with autocast(clf.device, clf.dtype):
            if cam:
                heatmap, z = grad_cam(clf.model, cam_layer(clf.model, arch), x)
                heatmaps.append(heatmap.cpu())
            else:
                with torch.no_grad():
                    z = clf.model(x).float()
        logits.append(z.cpu())
    if not logits:  # no images
        logits = [torch.zeros(0, len(clf.settings["classes"]))]
        heatmaps = [torch.zeros(0, *images.shape[-2:])]
    return torch.cat(logits), torch.cat(heatmaps) if cam else None


def energy(logits: torch.Tensor) -> torch.Tensor:
    """How unlike the training data an input looks: the free energy -logsumexp(logits) (Liu et
    al. 2020, "Energy-based out-of-distribution detection"); higher is less familiar. Unlike the
    top probability it keeps the logits' scale, which a softmax normalizes away."""
    return -torch.logsumexp(logits.float(), dim=1)


def energy_threshold(valid_logits: torch.Tensor, keep: float = 0.95) -> float:
    """The energy below which `keep` of the validation images lie: inputs above it are flagged
    as unlike the training data (about 1 in 20 in-distribution images is flagged too)."""
    return float(torch.quantile(energy(valid_logits), keep))


def calibrated(clf: Classifier, logits: torch.Tensor, raw: bool = False) -> torch.Tensor:
    """Probabilities: the softmax of the logits over the checkpoint's temperature (fitted on
    validation by `evaluate`, added by `release`), or of the logits alone when `raw` or the
    checkpoint has none."""
    temperature = 1.0 if raw else clf.settings.get("temperature") or 1.0
    return (logits / temperature).softmax(1)


def classify_prepared(clf: Classifier, images) -> torch.Tensor:
    """Logits for a prepared split (data.PreparedImages), read and framed a chunk at a time;
    chunks are whole batches, so the result equals one `classify` over the split."""
    chunk = 4 * BATCH_SIZE
    parts = [classify(clf, images.framed(slice(start, start + chunk), **framing(clf)))[0]
             for start in range(0, len(images), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, len(clf.settings["classes"]))

