"""Grad-CAM: where in the image the network's evidence for a class lies."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cam_layer(model: nn.Module, arch: str) -> nn.Module:
    """The last convolutional block, whose activations Grad-CAM weighs."""
    if arch == "resnet50":
        return model.layer4
    if arch == "inception_v3":
        return model.Mixed_7c
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    return model[list(model).index(convs[-1]) + 2]  # the ReLU after the last conv and its BN


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
    a = activations["a"]
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, logits.detach().float()
