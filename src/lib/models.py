"""The networks of the registered architectures (architectures.py), what each variant trains,
and the split of a network into its frozen prefix and trainable head."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from src.lib.architectures import ARCHITECTURES
from src.lib.config import VariantConfig
from src.lib.errors import UserError

AUX_LOSS_WEIGHT = 0.4  # Inception's auxiliary classifier, as in the Inception-V3 paper


class StudyCNN(nn.Sequential):
    """The study's CNN, layer for layer as its code builds it: five conv-BN-ReLU-maxpool blocks
    (32 to 512 channels) on grayscale input, Dropout2d(0.15) after blocks 3, 4 and 5, then dense
    layers of 512 and 256 units with Dropout 0.4 and 0.25. 14,547,908 parameters at 224x224."""

    def __init__(self, image_size: int = 224, num_classes: int = 4):
        layers, channels = [], 1
        for block, width in enumerate((32, 64, 128, 256, 512), start=1):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            if block >= 3:
                layers.append(nn.Dropout2d(0.15))
            channels = width
        side = image_size // 32
        super().__init__(
            *layers, nn.Flatten(),
            nn.Linear(512 * side * side, 512), nn.ReLU(inplace=True), nn.Dropout(0.4),
            nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.25),
            nn.Linear(256, num_classes))


def _imagenet_state_dict(arch: str, weights: str) -> dict | None:
    """ImageNet weights as torchvision downloads and caches them (`imagenet`: the registry's
    choice; or another of torchvision's, by name), or a local state-dict file."""
    if weights == "none":
        return None
    if weights.endswith((".pt", ".pth")):
        if not Path(weights).is_file():
            raise UserError(f"train.weights: '{weights}' does not exist; use imagenet, none or "
                            "the path of a state-dict file")
        return torch.load(weights, map_location="cpu", weights_only=True)
    available = tvm.get_model_weights(arch).__members__
    name = ARCHITECTURES[arch].weights if weights == "imagenet" else weights
    if name not in available:
        raise UserError(f"train.weights: torchvision has no {name} for {arch}; use imagenet, "
                        f"none or one of {', '.join(available)}")
    enum = available[name]
    try:
        return enum.get_state_dict(progress=True, weights_only=True)
    except Exception as e:  # URLError, hash mismatch, a proxy's HTML page...
        file = Path(enum.url).name
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(f"could not get ImageNet weights for {arch} ({type(e).__name__}): "
                        f"download {enum.url} and put {file} in {folder}, "
                        "or set train.weights=none") from None


def _replace_last_linear(model: nn.Module, path: str, num_classes: int) -> None:
    """The last Linear layer at or under `path`, new, with one output per class."""
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        name = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][-1]
        path, module = f"{path}.{name}", module.get_submodule(name)
    model.set_submodule(path, nn.Linear(module.in_features, num_classes))


def network(arch: str, image_size: int, num_classes: int,
            imagenet_state: dict | None = None) -> nn.Module:
    """The architecture with one output per class; ImageNet weights loaded first when given."""
    if arch == "cnn":
        return StudyCNN(image_size, num_classes)
    spec = ARCHITECTURES[arch]
    options = dict(spec.options)
    if arch == "inception_v3":  # its slow initialization, where the weights replace it
        options["init_weights"] = imagenet_state is None
    model = tvm.get_model(arch, weights=None, **options)
    if imagenet_state is not None:
        try:
            model.load_state_dict(imagenet_state)
        except RuntimeError as e:
            raise UserError(f"train.weights: the file does not hold torchvision's {arch} "
                            f"ImageNet state dict ({str(e).splitlines()[0]})") from None
    for path in spec.classifier:
        _replace_last_linear(model, path, num_classes)
    return model


def build_model(variant: VariantConfig, num_classes: int) -> nn.Module:
    """The variant's network, ready to train: pretrained weights per `train.weights` (an
    architecture without ImageNet weights starts from scratch) and requires_grad set on what it
    trains."""
    state = None if ARCHITECTURES[variant.arch].weights is None else _imagenet_state_dict(
        variant.arch, variant.train.weights)
    model = network(variant.arch, variant.image_size, num_classes, state)
    for p in model.parameters():
        p.requires_grad = False
    for module in trainable_modules(model, variant):
        for p in module.parameters():
            p.requires_grad = True
    return model


def trainable_modules(model: nn.Module, variant: VariantConfig) -> list[nn.Module]:
    if variant.trainable == "all":
        return [model]
    spec = ARCHITECTURES[variant.arch]
    paths = spec.classifier + (spec.last_block if variant.trainable == "last_block" else ())
    return [model.get_submodule(p) for p in paths]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def set_train_mode(model: nn.Module) -> None:
    """Train mode for what is trained; frozen BatchNorm layers keep their running statistics
    (the study let them drift, which changes the frozen backbone every batch)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()


def aux_features(aux_convs: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's InceptionAux.forward up to its final linear layer."""
    x = aux_convs(nn.functional.avg_pool2d(x, kernel_size=5, stride=3))
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)


_INCEPTION_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                   "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                   "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")


class InceptionPrefix(nn.Module):
    """Frozen Inception layers: up to Mixed_6e, or (classifier only) the whole network up to the
    pooled features of both the main and the auxiliary classifier."""

    def __init__(self, m: tvm.Inception3, to_pooled: bool):
        super().__init__()
        self.stem = nn.Sequential(*(getattr(m, n) for n in _INCEPTION_STEM))
        self.top = self.aux_convs = None
        if to_pooled:
            self.top = nn.Sequential(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c, m.avgpool, nn.Flatten(1))
            self.aux_convs = nn.Sequential(m.AuxLogits.conv0, m.AuxLogits.conv1)

    def forward(self, x):
        x = self.stem(x)
        return x if self.top is None else (self.top(x), aux_features(self.aux_convs, x))


class InceptionHead(nn.Module):
    """The trained Inception layers; in training mode returns (logits, aux_logits)."""

    def __init__(self, m: tvm.Inception3, from_pooled: bool):
        super().__init__()
        self.m, self.from_pooled = m, from_pooled

    def forward(self, *features):
        m = self.m
        if self.from_pooled:
            pooled, aux_pooled = features
            logits = m.fc(m.dropout(pooled))
            return (logits, m.AuxLogits.fc(aux_pooled)) if self.training else logits
        x, = features
        aux = m.AuxLogits(x) if self.training else None
        x = torch.flatten(m.avgpool(m.Mixed_7c(m.Mixed_7b(m.Mixed_7a(x)))), 1)
        logits = m.fc(m.dropout(x))
        return (logits, aux) if self.training else logits


# The functional steps of a forward pass (Architecture.layers) as modules.
_FUNCTIONAL = {"torch.flatten": lambda: nn.Flatten(1), "F.relu": nn.ReLU,
               "F.adaptive_avg_pool2d": lambda: nn.AdaptiveAvgPool2d(1)}


def _without(model: nn.Module, path: str) -> nn.Module:
    """`model` with the module at `path` replaced by nn.Identity; every other module, and so
    every parameter, is shared with `model`, which stays as it was."""
    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    first, _, rest = path.partition(".")
    clone._modules[first] = _without(model._modules[first], rest) if rest else nn.Identity()
    return clone


def split_frozen(model: nn.Module, variant: VariantConfig) -> tuple[nn.Module | None, nn.Module]:
    """(prefix, head) with head(*prefix(x)) == model(x) in eval mode. The prefix holds only
    frozen layers, so its output can be computed once per image and augmentation view and
    reused every epoch. prefix is None when everything trains, or where the architecture does
    not say how its forward pass runs up to its last block (Architecture.layers)."""
    if variant.trainable == "all":
        return None, model
    classifier_only = variant.trainable == "classifier"
    if variant.arch == "inception_v3":
        return InceptionPrefix(model, classifier_only), InceptionHead(model, classifier_only)
    spec = ARCHITECTURES[variant.arch]
    first_trained = (spec.classifier if classifier_only else spec.last_block)[0]
    if spec.layers:
        steps = [_FUNCTIONAL[s]() if s in _FUNCTIONAL else model.get_submodule(s)
                 for s in spec.layers]
        at = spec.layers.index(first_trained)
        return nn.Sequential(*steps[:at]), nn.Sequential(*steps[at:])
    if classifier_only:
        return _without(model, first_trained), model.get_submodule(first_trained)
    return None, model


def forward_train(model_or_head: nn.Module, features: tuple, targets: torch.Tensor,
                  criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and main logits; Inception's auxiliary loss counts 0.4 in training."""
    out = model_or_head(*features)
    if isinstance(out, tuple) or hasattr(out, "aux_logits"):
        logits, aux = out
        return criterion(logits, targets) + AUX_LOSS_WEIGHT * criterion(aux, targets), logits
    return criterion(out, targets), out
