"""Images: decoding (PNG, JPEG, DICOM), letterboxing, and the prepared images that training
reads memory-mapped. Finding the raw files is `raw`'s."""
from __future__ import annotations

import functools
import hashlib
import multiprocessing
import signal
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.lib.device import cpu_share
from src.lib.dicom import read_dicom
from src.lib.errors import UserError
from src.lib.io import MappedArray, read_json
from src.lib.paths import PREPARED_DIR
from src.lib.transforms import per_image, preset

MIN_SIDE = 16  # smaller images carry no anatomy; they are skipped and reported
IMAGES_FILE = "images.npy"  # prepare's letterboxes, uint8 [files, 3, S, S], one row per file


def decode_image(path: Path, dicom_window: tuple[float, float]) -> Image.Image:
    """Any PNG, JPEG or DICOM slice (Hounsfield units through `dicom_window`, centre and
    width) as 8-bit RGB."""
    if Path(path).suffix.lower() == ".dcm":
        im = read_dicom(path, *dicom_window).convert("RGB")
    else:
        im = decode_rgb(path)
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"image is {im.size[0]}x{im.size[1]} pixels, under {MIN_SIDE}")
    return im


def decode_rgb(path: Path) -> Image.Image:
    """Decode any PNG or JPEG to 8-bit RGB. Transparent pixels become black, like the letterbox
    padding; 16-bit grayscale is rescaled rather than clipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                a = a * (255.0 / a.max()) if a.max() > 0 else a
                im = Image.fromarray(a.round().astype(np.uint8), "L")
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, im.convert("RGBA"))
            return im.convert("RGB")


def letterbox(im: Image.Image, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the longer side is `size`, then pad with zeros to a
    centred size x size square, as the study did. Returns uint8 HxWx3."""
    w, h = im.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = im.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(canvas)


def pixel_digest(im: Image.Image) -> str:
    """Equal for images with the same size and RGB pixels, whatever their file encoding."""
    return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


# Fewer images are decoded or framed in the stage's own process: starting a pool costs about
# 2.5 s, more than it saves on 2 cores there (the study's 613 training images frame 4 s faster
# without one; its 1000 files decode as fast with one as without).
PARALLEL_FROM = 1000
_worker_stores = {}   # in each framing process: the images files it has open


def _start_framing_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    torch.set_num_threads(1)                      # one process per core already


def process_pool(workers: int, initializer=None, initargs=()) -> ProcessPoolExecutor:
    """A pool of `workers` processes forked from a fresh single-threaded server that has already
    imported this module (torch, numpy, PIL), not from this process: a fork while one of this
    process's threads (torch's, another pool's) holds a lock can leave the child deadlocked.
    Spawned where there is no fork server (Windows). An executor, not multiprocessing.Pool: when
    a worker dies (out of memory, killed), its results raise BrokenProcessPool (pool_map) where
    a Pool would wait for them forever."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # no effect once the server runs
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                               initargs=initargs)


def pool_map(pool: ProcessPoolExecutor, function, jobs, *, doing: str, chunksize: int = 1):
    """pool.map, in order; a worker that dies ends it with one line naming what it was doing."""
    try:
        yield from pool.map(function, jobs, chunksize=chunksize)
    except BrokenProcessPool:
        raise UserError(f"a worker process died while {doing} (out of memory, or killed); "
                        "free memory or use fewer processes, and run it again") from None


@functools.cache
def framing_pool() -> ProcessPoolExecutor | None:
    """One process per usable core for framing many images (device.cpu_share): each image is
    independent and framing is single-threaded numpy. None on one core. Closed when the
    program exits."""
    cores = cpu_share()
    return process_pool(cores, _start_framing_worker) if cores > 1 else None


def _frame_rows(job) -> np.ndarray:
    """In a framing process: read rows of an images file itself (so that only the small framed
    images travel between processes) and frame them."""
    path, version, rows, settings = job
    if _worker_stores.get(path, (None,))[0] != version:  # a new `prepare` wrote the file
        _worker_stores[path] = version, MappedArray(path)
    return preset(torch.from_numpy(_worker_stores[path][1].read(rows)), **settings).numpy()


class PreparedImages:
    """One split's letterboxes, uint8 [N, 3, S, S], read from the memory-mapped images file when
    indexed: a split of any size costs the memory of the rows asked for."""

    def __init__(self, store: MappedArray, rows):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        return self.store.array.shape[-1]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return torch.from_numpy(self.store.read(self.rows[index]))

    def chunks(self, size: int = 128):
        """(start, images) over the split in order."""
        for start in range(0, len(self), size):
            yield start, self[start:start + size]

    def framed(self, index, *, framing: str, intensity: str, size: int) -> torch.Tensor:
        """The images at `index` as transforms.preset frames them; in parallel for a large split."""
        settings = {"framing": framing, "intensity": intensity, "size": size}
        rows = self.rows[index.cpu().numpy() if isinstance(index, torch.Tensor) else index]
        pool = framing_pool() if per_image(framing, intensity) and \
            len(self) >= PARALLEL_FROM and np.size(rows) > 1 else None
        if pool is None:
            return preset(torch.from_numpy(self.store.read(rows)), **settings)
        stat = self.store.path.stat()
        jobs = [(str(self.store.path), (stat.st_ino, stat.st_mtime_ns), part, settings)
                for part in np.array_split(rows, cpu_share())]  # one job per process
        return torch.from_numpy(np.concatenate(list(pool_map(pool, _frame_rows, jobs,
                                                             doing="framing images"))))


def load_split(split: str, prepared_dir: Path = PREPARED_DIR) -> dict:
    """A prepared split: `images` (PreparedImages), `labels` int64 [N], `files`, `classes`,
    `dicom_window`; train adds `sample_weights` and `class_weights`, test `leak_free`."""
    meta = read_json(Path(prepared_dir) / f"{split}.json")
    images = PreparedImages(MappedArray(Path(prepared_dir) / IMAGES_FILE), meta.pop("rows"))
    out = {"images": images, "labels": torch.tensor(meta.pop("labels"), dtype=torch.int64)}
    for key, dtype in (("sample_weights", torch.float32), ("class_weights", torch.float32),
                       ("leak_free", torch.bool)):
        if key in meta:
            out[key] = torch.tensor(meta.pop(key), dtype=dtype)
    return out | meta


def balance_weights(labels: torch.Tensor, method: str, num_classes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample draw weights and per-class loss weights for the training split.
    oversample: draw every class equally often (the study's weighted sampler);
    class_weights: draw uniformly, weight the loss by inverse class frequency; none: neither."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    inverse = counts.sum() / (num_classes * counts)
    ones_s, ones_c = torch.ones(len(labels)), torch.ones(num_classes)
    if method == "oversample":
        return inverse[labels], ones_c
    if method == "class_weights":
        return ones_s, inverse
    return ones_s, ones_c
