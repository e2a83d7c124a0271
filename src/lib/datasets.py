"""What a training or validation batch is made of: a split's images framed as the variant sees
them (FramedImages), and the cached outputs of the variant's frozen prefix (PrefixOutputs).

Both are indexed by a batch of indices at once and compute a row the first time it is asked for,
then keep it in memory while `train.cache_mb` allows, else in a memory-mapped file (RowCache):
the cost follows what training draws, not the dataset's size. No DataLoader: the rows are
already in memory or mapped, and batched indexing of a tensor is faster than collating items
(and worker processes would each hold their own copy of the caches).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

from src.lib.device import autocast, channels_last, keyed_generator
from src.lib.errors import UserError
from src.lib.io import MappedArray
from src.lib.transforms import model_input


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


class FramedImages(Dataset):
    """A split's prepared images (data.PreparedImages) as the variant sees them: uint8
    [3, size, size], framed (transforms.preset) when first read, and kept."""

    def __init__(self, images, variant, *, budget: Budget, device):
        t, size = variant.train, variant.image_size
        framing = {"framing": t.framing, "intensity": t.intensity, "size": size}
        self.rows = RowCache(len(images), (3, size, size), torch.uint8, budget=budget,
                             device=device, compute=lambda idx: images.framed(idx, **framing))

    def __len__(self) -> int:
        return len(self.rows.done)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.rows.get(idx)


def view_draws(seed: int, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The augmentation draws [N,7] of cached views: each a function of the seed, the image and
    the view alone, so a view is the same whenever, and in whatever company (other images,
    other processes), it is computed."""
    return torch.stack([torch.rand(7, generator=keyed_generator(seed, "view", int(i), int(v)))
                        for i, v in zip(images, views)])


class PrefixOutputs(Dataset):
    """The frozen prefix's outputs for each image and augmentation view: `views` augmented
    copies of each image in training (train.augment_views, each view's augmentation its own
    seeded draw), one plain copy in validation. Computed in eval mode, so exactly what the whole
    network computes, a batch at a time, the first time a (image, view) is drawn."""

    def __init__(self, framed: FramedImages, prefix, variant, *, augment: str | None,
                 budget: Budget, device, dtype):
        t = variant.train
        self.framed, self.prefix, self.arch = framed, prefix.eval(), variant.arch
        self.augment, self.views = augment, t.augment_views if augment else 1
        self.seed, self.batch_size, self.device, self.dtype = t.seed, t.batch_size, device, dtype
        size = variant.image_size
        shapes = [o.shape[1:] for o in self._run(torch.zeros(1, 3, size, size,
                                                             dtype=torch.uint8))]
        self.shapes, self.widths = shapes, [math.prod(s) for s in shapes]
        self.rows = RowCache(self.views * len(framed), (sum(self.widths),),
                             dtype or torch.float32, budget=budget, device=device,
                             compute=self._compute)

    def __len__(self) -> int:
        return len(self.rows.done)

    @torch.no_grad()
    def _run(self, images: torch.Tensor, draws=None) -> tuple:
        with autocast(self.device, self.dtype):
            out = self.prefix(model_input(images.to(self.device), self.arch,
                                          strength=self.augment, draws=draws))
        return tuple(o.to(self.dtype or torch.float32) for o in
                     (out if isinstance(out, tuple) else (out,)))

    def _compute(self, slots: torch.Tensor) -> torch.Tensor:
        """Flat outputs of cache slots (view x N + image), a batch at a time."""
        n, parts = len(self.framed), []
        for start in range(0, len(slots), self.batch_size):
            chunk = slots[start:start + self.batch_size]
            draws = view_draws(self.seed, chunk % n, chunk // n) if self.augment else None
            out = self._run(self.framed[chunk % n], draws)
            parts.append(torch.cat([o.flatten(1) for o in out], 1))
        return torch.cat(parts)

    def __getitem__(self, key: tuple[torch.Tensor, torch.Tensor | None]) -> tuple:
        """(images, views) -> the prefix's outputs for them, as the head takes them."""
        idx, views = key
        views = views if self.augment else torch.zeros(len(idx), dtype=torch.long)
        flat = self.rows.get(views * len(self.framed) + idx.cpu()).float()
        return tuple(channels_last(part.reshape(-1, *shape)) for part, shape in
                     zip(flat.split(self.widths, 1), self.shapes))
