"""The seeded order of training, and each process's share of it.

Every random draw of an epoch (which images, which cached view of each, how each is augmented)
comes from the key ("epoch", e) of the recipe's seed, dropout's from ("step", e, step): epoch e
draws the same whatever came before it, however many epochs follow, wherever the caches live
and on however many processes it runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from src.lib.device import draw_seed, keyed_generator


def draw_order(sample_weights: torch.Tensor, draws: int, generator) -> torch.Tensor:
    """One epoch's training indices: weighted draws with replacement (the study's sampler) when
    the weights differ, otherwise a permutation of the training split."""
    if torch.allclose(sample_weights, sample_weights[0]):
        n = len(sample_weights)
        perm = torch.cat([torch.randperm(n, generator=generator)
                          for _ in range(int(np.ceil(draws / n)))])
        return perm[:draws]
    return torch.multinomial(sample_weights, draws, replacement=True, generator=generator)


@dataclass(frozen=True)
class Batch:
    """This process's share of one training step."""
    step: int
    images: torch.Tensor   # int64, indices into the training split
    views: torch.Tensor    # int64, which cached view of each image, in [0, augment_views)
    augment: torch.Tensor  # float32 [n, 7], uniform in [0,1) (transforms.augment)
    share: float           # processes x this share's part of the batch's loss weight: scaling
                           # its mean loss by it makes DDP's average the whole batch's mean


class EpochSampler(Sampler):
    """Batches of `batch_size` draws, as DistributedSampler is used: `set_epoch(e)`, then
    iterate. Every process makes the whole epoch's draws and takes its contiguous part of each
    batch, so 1 or N processes draw the same images, views and augmentations, and together
    train on the same batches. With several processes, a last batch too small to give each one
    an image is left out."""

    def __init__(self, sample_weights: torch.Tensor, loss_weights: torch.Tensor, *, seed: int,
                 draws: int, views: int, batch_size: int, rank: int = 0, processes: int = 1):
        self.sample_weights, self.loss_weights = sample_weights, loss_weights
        self.seed, self.draws, self.views, self.batch_size = seed, draws, views, batch_size
        self.rank, self.processes, self.epoch = rank, processes, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        steps, last = divmod(self.draws, self.batch_size)
        return steps + (last >= self.processes)

    def __iter__(self):
        generator = keyed_generator(self.seed, "epoch", self.epoch)
        order = draw_order(self.sample_weights, self.draws, generator)
        views = torch.randint(self.views, (self.draws,), generator=generator)
        augment = torch.rand(self.draws, 7, generator=generator)
        for step in range(len(self)):
            whole = torch.arange(step * self.batch_size,
                                 min((step + 1) * self.batch_size, self.draws))
            part = whole.tensor_split(self.processes)[self.rank]
            share = 1.0
            if self.processes > 1:
                weights = self.loss_weights[order[whole]]
                share = float(self.processes * weights[part - whole[0]].sum() / weights.sum())
            yield Batch(step, order[part], views[part], augment[part], share)

    def seed_step(self, step: int) -> None:
        """Dropout's masks for `step`: the global generators (CPU and every GPU) from the step's
        own seed, and each process's own where there are several."""
        ranked = (self.rank,) if self.processes > 1 else ()
        torch.manual_seed(draw_seed(self.seed, "step", self.epoch, step, *ranked))
