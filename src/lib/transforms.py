"""Tensor presets: framing, resize, augmentation and normalization on uint8 batches.

Images are decoded and letterboxed once, in `prepare`; everything here works on tensors, so
training never touches PIL.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from src.lib.architectures import ARCHITECTURES

_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
# Augmentation strengths (`train.augment`): the study's, and a stronger one that also zooms,
# stretches and changes gamma, so the model sees the framing and exposure differences between
# Kaggle's splits (test is darker and framed tighter than train) during training.
AUGMENT = {"study": {"degrees": 10.0, "jitter": 0.1, "zoom": 0.0, "gamma": 0.0},
           "strong": {"degrees": 10.0, "jitter": 0.3, "zoom": 0.15, "gamma": 0.3}}
BODY_THRESHOLD = 25  # gray level above which a pixel may be tissue; air and padding are darker


def _erode(mask: np.ndarray) -> np.ndarray:
    """One binary erosion by the 3x3 cross, outside the image counting as background."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0] = out[-1] = out[:, 0] = out[:, -1] = False
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One binary dilation by the 3x3 cross."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def body_mask(gray: np.ndarray) -> np.ndarray:
    """The patient's body in a uint8 slice: the largest bright region, lungs (holes) filled in.
    Text overlays, rulers and most of the scanner table are separate regions and fall outside.
    The same mask as scipy's binary_opening(iterations=2), label and binary_fill_holes, three
    times faster: array shifts for the opening, and holes found as the background regions that
    do not touch the border (tests/test_transforms.py checks both ways agree)."""
    bright = gray > BODY_THRESHOLD
    for step in (_erode, _erode, _dilate, _dilate):
        bright = step(bright)
    regions, count = ndimage.label(bright)
    if count == 0:
        return np.ones_like(bright)
    body = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    outside, _ = ndimage.label(~body)
    edge = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    return ~np.isin(outside, edge[edge > 0])


def frame(image: torch.Tensor, framing: str, intensity: str, size: int) -> torch.Tensor:
    """One letterboxed uint8 [3,S,S] image -> uint8 [3,size,size] per `train.framing` and
    `train.intensity`. `body` crops to the body's bounding box and stretches it to the square,
    so that neither the field of view nor the aspect ratio tells the splits apart;
    `body_masked` also blacks out what is not body (table, text overlays); `window` maps the
    body's 1st to 99th gray-level percentiles to 0..255, as a radiologist's window would."""
    if framing == "letterbox" and intensity == "as_is":
        return resize(image[None], size)[0]
    x = image.float()
    gray = (x * _GRAY[0]).sum(0)
    mask = body_mask(gray.round().to(torch.uint8).numpy())
    if intensity == "window":
        low, high = np.percentile(gray.numpy()[mask], [1, 99])
    if framing != "letterbox":  # crop first: the pixel-wise steps below then do less work
        rows, cols = np.nonzero(mask)
        box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
        x, mask = x[:, box[0], box[1]], mask[box]
    if intensity == "window":
        x = ((x - low) * (255 / max(high - low, 1.0))).clamp(0, 255)
    if framing == "body_masked":
        x = x * torch.from_numpy(mask)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    return x.round().clamp(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch of letterboxed squares; a square stays a letterbox at any size."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def per_image(framing: str, intensity: str) -> bool:
    """Whether `preset` frames image by image (the body's box and window differ per image)."""
    return not (framing == "letterbox" and intensity == "as_is")


def preset(images: torch.Tensor, *, framing: str, intensity: str, size: int) -> torch.Tensor:
    """Prepared uint8 letterboxes -> what a variant sees: framed at its image size."""
    if not per_image(framing, intensity) or not len(images):
        return resize(images, size)  # the study's: one batched resize
    return torch.stack([frame(im, framing, intensity, size) for im in images])


def augment(x: torch.Tensor, generator: torch.Generator | None, strength: str = "study",
            draws: torch.Tensor | None = None) -> torch.Tensor:
    """Augmentation of a float batch in [0,1], per image: horizontal flip, rotation, zoom with an
    aspect change, gamma, brightness and contrast, as `AUGMENT[strength]` sets them. One affine
    resample per image. Its randomness: `draws` ([N,7] uniform in [0,1)), else 7 per image
    from `generator`."""
    a = AUGMENT[strength]
    if draws is None:
        draws = torch.rand(x.shape[0], 7, generator=generator)
    u = draws.to(x.device) * 2 - 1  # uniform in [-1,1]
    angle = u[:, 0] * math.radians(a["degrees"])
    flip = torch.where(u[:, 1] < 0, -1.0, 1.0)
    scale_x = 1 + u[:, 2] * a["zoom"]
    scale_y = scale_x * (1 + u[:, 3] * a["zoom"])
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos * flip / scale_x, -sin / scale_x, zero], 1),
                         torch.stack([sin * flip / scale_y, cos / scale_y, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x.clamp(0, 1) ** torch.exp(u[:, 4] * a["gamma"]).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u[:, 5] * a["jitter"]).view(-1, 1, 1, 1) + mean
    return (x * (1 + u[:, 6] * a["jitter"]).view(-1, 1, 1, 1)).clamp(0, 1)


def normalize(x: torch.Tensor, arch: str) -> torch.Tensor:
    """Float batch in [0,1], 3 channels -> the architecture's input (grayscale for the study's
    CNN, normalized as its weights were trained)."""
    spec = ARCHITECTURES[arch]
    if spec.grayscale:
        x = (x * _GRAY.to(x.device)).sum(1, keepdim=True)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def model_input(images: torch.Tensor, arch: str, generator: torch.Generator | None = None,
                strength: str = "study", draws: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 batch -> normalized float input, augmented when a generator or draws are given.
    channels_last: oneDNN convolutions ran 1.6 to 2x faster in it on a 2-core AVX-512 CPU."""
    x = images.float() / 255
    if generator is not None or draws is not None:
        x = augment(x, generator, strength, draws)
    return normalize(x, arch).contiguous(memory_format=torch.channels_last)
