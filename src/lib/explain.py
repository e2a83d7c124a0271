"""Grad-CAM: where in the image the network's evidence for a class lies."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.lib.architectures import ARCHITECTURES


def cam_layer(model: nn.Module, arch: str) -> nn.Module:
    """The layer whose activations Grad-CAM weighs (Architecture.cam_layer)."""
    return model.get_submodule(ARCHITECTURES[arch].cam_layer)


def _on_grid(a: torch.Tensor) -> torch.Tensor:
    """A transformer's tokens [N, 1 + H*W, C] (class token first) as a feature map [N,C,H,W];
    a convolution's map as it is."""
    if a.dim() == 4:
        return a
    side = math.isqrt(a.shape[1] - 1)
    return a[:, 1:].transpose(1, 2).reshape(a.shape[0], -1, side, side)


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
             target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps in [0, 1] of the input's size [N, H, W] for class `target` (default: the
    predicted one), and the logits [N, C] in float32. The model is left unchanged."""
    activations = {}

    def keep(module, inputs, output):
        output.retain_grad()
        activations["a"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # a graph even where every weight is frozen
            logits = model(x)
            target = logits.argmax(1) if target is None else target
            model.zero_grad(set_to_none=True)
            logits.gather(1, target.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    a, grad = _on_grid(activations["a"]), _on_grid(activations["a"].grad)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, logits.detach().float()
