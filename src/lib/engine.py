"""The training loop: the training step, epochs over cached features or augmented images,
validation, early stopping."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.lib.device import (
    autocast, channels_last, draw_seed, grad_scaler, keyed_generator
)
from src.lib.errors import UserError
from src.lib.io import MappedArray
from src.lib.models import forward_train, set_train_mode, split_frozen
from src.lib.scores import confusion, scores_from_confusion
from src.lib.transforms import model_input


def scores(targets, predictions, loss: float, num_classes: int) -> dict:
    accuracy, macro, weighted = scores_from_confusion(confusion(targets, predictions, num_classes))
    return {"loss": loss, "acc": float(accuracy), "f1_macro": float(macro),
            "f1_weighted": float(weighted)}


class Budget:
    """The memory one training run's caches may hold (`train.cache_mb`), claimed in turn."""

    def __init__(self, megabytes: int):
        self.left = megabytes * 2**20

    def claim(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


class RowCache:
    """Rows [N, *row_shape] computed by `compute(indices)` on first use and kept for the run:
    on `device` while the budget allows, else in a memory-mapped file in a temporary folder
    that goes with the cache."""

    def __init__(self, n: int, row_shape: tuple, dtype: torch.dtype, *, compute, budget: Budget,
                 device):
        self.compute, self.dtype, self.device = compute, dtype, device
        self.done = torch.zeros(n, dtype=torch.bool)
        self.rows = self.file = None
        if budget.claim(n * math.prod(row_shape) * dtype.itemsize):
            self.rows = torch.empty((n, *row_shape), dtype=dtype, device=device)
        else:
            self._folder = tempfile.TemporaryDirectory(prefix="chest-ct-cache-")
            # numpy has no bfloat16: its 16 bits are stored as int16 and viewed back
            stored = torch.int16 if dtype == torch.bfloat16 else dtype
            try:
                self.file = MappedArray.create(Path(self._folder.name) / "rows.npy",
                                               (n, *row_shape),
                                               torch.empty(0, dtype=stored).numpy().dtype)
            except UserError as e:
                raise UserError(f"{e}, or set TMPDIR to a folder on a larger disk (training's "
                                "caches go there beyond train.cache_mb)") from None

    @property
    def in_memory(self) -> bool:
        return self.rows is not None

    def put(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        if self.in_memory:
            self.rows[idx.to(self.device)] = values.to(self.device, self.dtype)
        else:
            values = values.to("cpu", self.dtype)
            values = values.view(torch.int16) if self.dtype == torch.bfloat16 else values
            self.file.write(idx.numpy(), values.numpy())
        self.done[idx] = True

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.cpu()
        missing = idx[~self.done[idx]].unique()
        if len(missing):
            self.put(missing, self.compute(missing))
        if self.in_memory:
            return self.rows[idx.to(self.device)]
        rows = torch.from_numpy(self.file.read(idx.numpy()))
        return (rows.view(torch.bfloat16) if self.dtype == torch.bfloat16 else rows
                ).to(self.device)


def slot_draws(seed: int, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The augmentation draws [N,7] of cached views: each a function of the seed, the image and
    the view alone, so a view is the same whenever, and in whatever company, it is computed."""
    return torch.stack([torch.rand(7, generator=keyed_generator(seed, "view", int(i), int(v)))
                        for i, v in zip(images, views)])


@dataclass(frozen=True)
class EpochDraws:
    """Every random draw of one training epoch, made up front from its own seed: the images in
    order (the study's weighted sampler), the cached view of each draw (frozen prefix) and the
    augmentation of each draw (everything trains). Epoch e draws the same whatever came before
    it and however many epochs follow; dropout is seeded per step from the same key."""
    seed: int
    epoch: int
    order: torch.Tensor    # int64 [draws], indices into the training split
    view: torch.Tensor     # int64 [draws], in [0, augment_views)
    augment: torch.Tensor  # float32 [draws, 7], uniform in [0,1) (transforms.augment)

    def seed_step(self, step: int) -> None:
        """Dropout's masks for step `step`: the global generators (CPU and every GPU) from the
        step's own seed."""
        torch.manual_seed(draw_seed(self.seed, "step", self.epoch, step))


def epoch_draws(seed: int, epoch: int, sample_weights: torch.Tensor, draws: int,
                views: int) -> EpochDraws:
    generator = keyed_generator(seed, "epoch", epoch)
    order = draw_order(sample_weights, draws, generator)
    return EpochDraws(seed, epoch, order, torch.randint(views, (draws,), generator=generator),
                      torch.rand(draws, 7, generator=generator))


class Batches:
    """Where a training or validation batch comes from.

    `images`: data.PreparedImages. They are framed (transforms.preset) when first drawn and
    kept. Without a frozen prefix, a batch is these images, augmented per draw when `train`.
    With one, a batch is its outputs for one of `train.augment_views` augmented copies of each
    image (one unaugmented copy for validation), computed in eval mode (so exactly what the full
    network computes) when first drawn, and kept: the cost follows what training draws, not the
    dataset's size. Each view's augmentation is its own seeded draw (slot_draws). What does not
    fit in `budget` is kept on disk (RowCache), which changes where it is kept, not what."""

    def __init__(self, images, labels: torch.Tensor, variant, *, device, dtype, budget: Budget,
                 prefix=None, train: bool = False):
        t = variant.train
        self.labels, self.arch, self.device, self.dtype = labels, variant.arch, device, dtype
        self.seed, self.batch_size = t.seed, t.batch_size
        self.augment, self.views = (t.augment, t.augment_views) if train else (None, 1)
        n, size = len(labels), variant.image_size
        framing = {"framing": t.framing, "intensity": t.intensity, "size": size}
        self.frames = RowCache(n, (3, size, size), torch.uint8, budget=budget, device=device,
                               compute=lambda idx: images.framed(idx, **framing))
        self.prefix = self.features = None
        if prefix is None:
            return
        self.prefix = prefix.eval()
        shapes = [o.shape[1:] for o in self._run_prefix(torch.zeros(1, 3, size, size,
                                                                    dtype=torch.uint8))]
        self.shapes, self.widths = shapes, [math.prod(s) for s in shapes]
        self.features = RowCache(self.views * n, (sum(self.widths),), dtype or torch.float32,
                                 budget=budget, device=device, compute=self._features)

    @torch.no_grad()
    def _run_prefix(self, images: torch.Tensor, draws=None) -> tuple:
        with autocast(self.device, self.dtype):
            out = self.prefix(model_input(images.to(self.device), self.arch,
                                          strength=self.augment, draws=draws))
        return tuple(o.to(self.dtype or torch.float32) for o in
                     (out if isinstance(out, tuple) else (out,)))

    def _features(self, slots: torch.Tensor) -> torch.Tensor:
        """Flat prefix outputs of cache slots (view x N + image), a batch at a time."""
        n, parts = len(self.labels), []
        for start in range(0, len(slots), self.batch_size):
            chunk = slots[start:start + self.batch_size]
            draws = slot_draws(self.seed, chunk % n, chunk // n) if self.augment else None
            out = self._run_prefix(self.frames.get(chunk % n), draws)
            parts.append(torch.cat([o.flatten(1) for o in out], 1))
        return torch.cat(parts)

    def get(self, idx: torch.Tensor, view: torch.Tensor | None = None,
            augment: torch.Tensor | None = None) -> tuple:
        """The batch of images `idx`; in training, `view` and `augment` are their EpochDraws."""
        if self.features is None:
            return (model_input(self.frames.get(idx), self.arch, strength=self.augment,
                                draws=augment if self.augment else None),)
        view = view if self.augment else torch.zeros(len(idx), dtype=torch.long)
        flat = self.features.get(view * len(self.labels) + idx.cpu()).float()
        return tuple(channels_last(part.reshape(-1, *shape)) for part, shape in
                     zip(flat.split(self.widths, 1), self.shapes))


@dataclass
class TrainingSetup:
    """What one training step needs; `train` and tools/bench.py get it from training_setup."""
    head: nn.Module            # the trained part; `prefix` (frozen, or None) feeds it
    prefix: nn.Module | None
    batches: Batches           # the training split's
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    budget: Budget             # what is left of `train.cache_mb` for the validation batches


def training_setup(model: nn.Module, variant, train: dict, *, device, dtype) -> TrainingSetup:
    """The variant's training step: frozen prefix and trained head, cached training batches,
    Adam with the variant's weight decay (the study's optimizer), class-weighted cross-entropy
    (`prepare.balance`), loss scaling for float16. `train`: the training split as
    data.load_split gives it."""
    t = variant.train
    prefix, head = split_frozen(model, variant)
    budget = Budget(t.cache_mb)
    batches = Batches(train["images"], train["labels"], variant, device=device, dtype=dtype,
                      budget=budget, prefix=prefix, train=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                 weight_decay=t.weight_decay)
    return TrainingSetup(head=head, prefix=prefix, batches=batches, optimizer=optimizer,
                         criterion=nn.CrossEntropyLoss(weight=train["class_weights"].to(device)),
                         scaler=grad_scaler(device, dtype), budget=budget)


def train_one_epoch(setup: TrainingSetup, draws: EpochDraws, batch_size: int, *, device,
                    dtype, desc: str) -> dict:
    head, batches, optimizer, scaler = setup.head, setup.batches, setup.optimizer, setup.scaler
    set_train_mode(head)
    total_loss, targets, predictions = 0.0, [], []
    order = draws.order
    progress = tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False)
    for step, start in enumerate(progress):
        batch = slice(start, start + batch_size)
        idx = order[batch]
        features = batches.get(idx, draws.view[batch], draws.augment[batch])
        y = batches.labels[idx].to(device)
        draws.seed_step(step)
        with autocast(device, dtype):
            loss, logits = forward_train(head, features, y, setup.criterion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(idx)
        targets.append(y.cpu())
        predictions.append(logits.argmax(1).cpu())
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return scores(torch.cat(targets), torch.cat(predictions), total_loss / len(order),
                  logits.shape[1])


@torch.no_grad()
def validate(head: nn.Module, batches: Batches, *, batch_size: int, device, dtype) -> dict:
    """Unweighted cross-entropy and scores of the head in eval mode on the validation split.
    The loss comes from the logits: from probabilities, a wrong answer's loss is capped where its
    probability rounds to zero, and early stopping would then count errors, not the loss."""
    head.eval()
    logits = []
    for start in range(0, len(batches.labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(batches.labels)))
        with autocast(device, dtype):
            logits.append(head(*batches.get(idx)).float().cpu())
    logits = torch.cat(logits)
    loss = nn.functional.cross_entropy(logits, batches.labels).item()
    return scores(batches.labels.numpy(), logits.argmax(1).numpy(), loss, logits.shape[1])


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
