"""The training loop: the training step, epochs over cached features or augmented images,
validation, early stopping."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from tqdm import tqdm

from src.lib.device import autocast, channels_last, grad_scaler
from src.lib.models import forward_train, set_train_mode, split_frozen
from src.lib.transforms import model_input, preset


def scores(targets, predictions, loss: float) -> dict:
    return {"loss": loss, "acc": accuracy_score(targets, predictions),
            "f1_macro": f1_score(targets, predictions, average="macro", zero_division=0),
            "f1_weighted": f1_score(targets, predictions, average="weighted", zero_division=0)}


class Batches:
    """Where a training or validation batch comes from.

    With a frozen prefix: its outputs for `views` augmented copies of every image, computed once
    in eval mode (so exactly what the full network would compute) and picked from at random each
    epoch. Without one: the uint8 images, augmented on the fly. `augment` names the strength
    (transforms.AUGMENT); None leaves the images as they are. Both live on the training device,
    so a GPU never waits for a host-to-device copy (a few GB at most for these variants)."""

    def __init__(self, images, labels, *, arch, device, dtype, prefix=None, views=1,
                 augment=None, generator=None, batch_size=64, desc=""):
        self.labels, self.arch, self.device, self.generator = labels, arch, device, generator
        self.augment = augment
        if prefix is None:
            self.images, self.features = images.to(device), None
            return
        prefix.eval()
        cached = []
        with torch.no_grad(), autocast(device, dtype):
            for _ in tqdm(range(views), desc=f"cache {desc}", unit="view", leave=False):
                view = []
                for start in range(0, len(images), batch_size):
                    x = model_input(images[start:start + batch_size].to(device), arch,
                                    generator if augment else None, augment)
                    out = prefix(x)
                    out = out if isinstance(out, tuple) else (out,)
                    view.append(tuple(o.to(dtype or torch.float32) for o in out))
                cached.append(tuple(torch.cat(parts) for parts in zip(*view)))
        # features[k]: [views, N, ...] for the k-th output of the prefix
        self.features = tuple(torch.stack(parts) for parts in zip(*cached))

    def get(self, idx: torch.Tensor) -> tuple:
        idx = idx.to(self.device)
        if self.features is None:
            return (model_input(self.images[idx], self.arch,
                                self.generator if self.augment else None, self.augment),)
        view = torch.randint(len(self.features[0]), (len(idx),), generator=self.generator) \
            if self.augment else torch.zeros(len(idx), dtype=torch.long)
        return tuple(channels_last(f[view.to(self.device), idx].float()) for f in self.features)


@dataclass
class TrainingSetup:
    """What one training step needs; `train` and tools/bench.py get it from training_setup."""
    head: nn.Module            # the trained part; `prefix` (frozen, or None) feeds it
    prefix: nn.Module | None
    batches: Batches           # the training split's
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scaler: torch.amp.GradScaler


def framed(images: torch.Tensor, variant) -> torch.Tensor:
    """Prepared letterboxes -> the variant's framing, intensity and image size."""
    t = variant.train
    return preset(images, framing=t.framing, intensity=t.intensity, size=variant.image_size)


def training_setup(model: nn.Module, variant, train: dict, *, device, dtype,
                   generator) -> TrainingSetup:
    """The variant's training step: frozen prefix and trained head, cached training batches,
    Adam with the variant's weight decay (the study's optimizer), class-weighted cross-entropy
    (`prepare.balance`), loss scaling for float16. `train`: the training split's `images`,
    `labels` and `class_weights`, as `prepare` stores them."""
    t = variant.train
    prefix, head = split_frozen(model, variant)
    batches = Batches(framed(train["images"], variant), train["labels"], arch=variant.arch,
                      device=device,
                      dtype=dtype, prefix=prefix, views=t.augment_views, augment=t.augment,
                      generator=generator, batch_size=t.batch_size, desc="train")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                 weight_decay=t.weight_decay)
    return TrainingSetup(head=head, prefix=prefix, batches=batches, optimizer=optimizer,
                         criterion=nn.CrossEntropyLoss(weight=train["class_weights"].to(device)),
                         scaler=grad_scaler(device, dtype))


def train_one_epoch(setup: TrainingSetup, order: torch.Tensor, batch_size: int, *, device,
                    dtype, desc: str) -> dict:
    head, batches, optimizer, scaler = setup.head, setup.batches, setup.optimizer, setup.scaler
    set_train_mode(head)
    total_loss, targets, predictions = 0.0, [], []
    progress = tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False)
    for start in progress:
        idx = order[start:start + batch_size]
        y = batches.labels[idx].to(device)
        with autocast(device, dtype):
            loss, logits = forward_train(head, batches.get(idx), y, setup.criterion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(idx)
        targets.append(y.cpu())
        predictions.append(logits.argmax(1).cpu())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return scores(torch.cat(targets), torch.cat(predictions), total_loss / len(order))


@torch.no_grad()
def validate(head: nn.Module, batches: Batches, *, batch_size: int, device, dtype) -> dict:
    """Unweighted cross-entropy and scores of the head in eval mode on the validation split."""
    head.eval()
    probabilities = []
    for start in range(0, len(batches.labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(batches.labels)))
        with autocast(device, dtype):
            logits = head(*batches.get(idx))
        probabilities.append(torch.softmax(logits.float(), 1).cpu())
    probabilities = torch.cat(probabilities)
    loss = nn.functional.nll_loss(torch.log(probabilities.clamp_min(1e-12)), batches.labels).item()
    return scores(batches.labels.numpy(), probabilities.argmax(1).numpy(), loss)


def draw_order(sample_weights: torch.Tensor, draws: int, generator) -> torch.Tensor:
    """One epoch's training indices: weighted draws with replacement (the study's sampler) when
    the weights differ, otherwise a permutation of the training split."""
    if torch.allclose(sample_weights, sample_weights[0]):
        n = len(sample_weights)
        perm = torch.cat([torch.randperm(n, generator=generator)
                          for _ in range(int(np.ceil(draws / n)))])
        return perm[:draws]
    return torch.multinomial(sample_weights, draws, replacement=True, generator=generator)


@dataclass
class EarlyStopping:
    """The study's rule: an epoch improves when its validation loss is at least `min_delta`
    below the best so far; training stops after `patience` epochs without one, and the weights
    of the best epoch are the ones kept."""
    patience: int
    min_delta: float
    best_loss: float = math.inf
    best_epoch: int = 0

    def improved(self, loss: float, epoch: int) -> bool:
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = loss, epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """After `epoch` has been trained and validated."""
        return epoch - self.best_epoch >= self.patience
