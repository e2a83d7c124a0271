"""The training loop: the training step, an epoch over the sampler's batches, validation,
early stopping."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src.lib.datasets import Budget, FramedImages, PrefixOutputs
from src.lib.device import autocast, grad_scaler
from src.lib.distributed import Processes, data_parallel, summed
from src.lib.models import forward_train, set_train_mode, split_frozen
from src.lib.sampler import Batch, EpochSampler
from src.lib.scores import confusion, scores_from_confusion
from src.lib.transforms import model_input


def scores(counts, loss: float) -> dict:
    """Loss and scores from a confusion matrix (rows: true class; an array or CPU tensor)."""
    accuracy, macro, weighted = scores_from_confusion(np.asarray(counts))
    return {"loss": loss, "acc": float(accuracy), "f1_macro": float(macro),
            "f1_weighted": float(weighted)}


def split_data(images, variant, *, prefix, augment: str | None, budget: Budget, device,
               dtype) -> FramedImages | PrefixOutputs:
    """A split as the head takes it: the frozen prefix's cached outputs where there is a prefix,
    else the framed images. `augment`: train.augment in training, None in validation."""
    framed = FramedImages(images, variant, budget=budget, device=device)
    if prefix is None:
        return framed
    return PrefixOutputs(framed, prefix, variant, augment=augment, budget=budget, device=device,
                         dtype=dtype)


def head_inputs(data: FramedImages | PrefixOutputs, idx: torch.Tensor, *, arch: str,
                augment: str | None = None, views=None, draws=None) -> tuple:
    """What the head takes for images `idx`: the prefix's outputs for their cached views, or
    the framed images, augmented by their draws in training, normalized."""
    if isinstance(data, PrefixOutputs):
        return data[idx, views]
    return (model_input(data[idx], arch, strength=augment, draws=draws if augment else None),)


@dataclass
class TrainingSetup:
    """What one training step needs; `train` and tools/bench.py get it from training_setup."""
    head: nn.Module            # the trained part (under DDP on several processes)
    prefix: nn.Module | None   # frozen, feeding the head; None when everything trains
    data: FramedImages | PrefixOutputs  # the training split's
    labels: torch.Tensor
    arch: str
    augment: str               # train.augment
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    budget: Budget             # what is left of `train.cache_mb` for the validation split


def training_setup(model: nn.Module, variant, train: dict, *, device, dtype,
                   procs: Processes = Processes()) -> TrainingSetup:
    """The variant's training step: frozen prefix and trained head, the training split through
    the caches, Adam with the variant's weight decay (the study's optimizer), class-weighted
    cross-entropy (`prepare.balance`), loss scaling for float16. `train`: the training split as
    data.load_split gives it."""
    t = variant.train
    prefix, head = split_frozen(model, variant)
    budget = Budget(t.cache_mb)
    data = split_data(train["images"], variant, prefix=prefix, augment=t.augment, budget=budget,
                      device=device, dtype=dtype)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                 weight_decay=t.weight_decay)
    return TrainingSetup(head=data_parallel(head, procs, device), prefix=prefix, data=data,
                         labels=train["labels"], arch=variant.arch, augment=t.augment,
                         optimizer=optimizer,
                         criterion=nn.CrossEntropyLoss(weight=train["class_weights"].to(device)),
                         scaler=grad_scaler(device, dtype), budget=budget)


def epoch_sampler(variant, train: dict, *, draws: int | None = None,
                  procs: Processes = Processes()) -> EpochSampler:
    """The training split's EpochSampler: the study's weighted draws (`sample_weights`), each
    image's loss weight its class's (`class_weights`), `draws` per epoch (by default
    train.draws_per_epoch, where 0 is the size of the split)."""
    t, labels = variant.train, train["labels"]
    return EpochSampler(train["sample_weights"], train["class_weights"][labels], seed=t.seed,
                        draws=draws or t.draws_per_epoch or len(labels), views=t.augment_views,
                        batch_size=t.batch_size, rank=procs.rank, processes=procs.count)


def train_step(setup: TrainingSetup, batch: Batch, sampler: EpochSampler, *, device,
               dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on this process's share of a batch: (loss, logits, targets)."""
    features = head_inputs(setup.data, batch.images, arch=setup.arch, augment=setup.augment,
                           views=batch.views, draws=batch.augment)
    y = setup.labels[batch.images].to(device)
    sampler.seed_step(batch.step)
    with autocast(device, dtype):
        loss, logits = forward_train(setup.head, features, y, setup.criterion)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss * batch.share if sampler.processes > 1 else loss).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    return loss, logits, y


def train_one_epoch(setup: TrainingSetup, sampler: EpochSampler, *, device, dtype, desc: str,
                    procs: Processes = Processes()) -> dict:
    """An epoch of the sampler's batches; the scores are over every process's draws."""
    set_train_mode(setup.head)
    loss_sum, counts = torch.zeros(2, dtype=torch.float64), 0
    progress = tqdm(sampler, desc=desc, unit="batch", leave=False, disable=not procs.main)
    for batch in progress:
        loss, logits, y = train_step(setup, batch, sampler, device=device, dtype=dtype)
        value = loss.item()  # one wait for the device per step
        loss_sum += torch.tensor([value * len(y), len(y)], dtype=torch.float64)
        counts = counts + confusion(y.cpu().numpy(), logits.argmax(1).cpu().numpy(),
                                    logits.shape[1])
        progress.set_postfix(loss=f"{value:.3f}")
    loss_sum = summed(loss_sum, procs)
    counts = summed(torch.as_tensor(counts), procs)
    return scores(counts, float(loss_sum[0] / loss_sum[1]))


@torch.no_grad()
def validate(head: nn.Module, data: FramedImages | PrefixOutputs, labels: torch.Tensor, *,
             arch: str, batch_size: int, device, dtype) -> dict:
    """Unweighted cross-entropy and scores of the head in eval mode on the validation split.
    The loss comes from the logits: from probabilities, a wrong answer's loss is capped where its
    probability rounds to zero, and early stopping would then count errors, not the loss."""
    head = getattr(head, "module", head).eval()  # DDP's module: one process validates
    logits = []
    for start in range(0, len(labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(labels)))
        with autocast(device, dtype):
            logits.append(head(*head_inputs(data, idx, arch=arch)).float().cpu())
    logits = torch.cat(logits)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return scores(confusion(labels.numpy(), logits.argmax(1).numpy(), logits.shape[1]), loss)


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
