"""Where and in which precision the networks run: device choice, autocast, loss scaling,
memory format, seeding and the keyed random streams of a training run."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from src.lib.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def draw_seed(seed: int, *key) -> int:
    """The seed of one named draw of a run, e.g. ("order", epoch) or ("view", image, view): a
    pure function of the recipe's seed and what is drawn. Every random draw of training comes
    from such a seed, never from a generator whose state depends on what was drawn before, so
    cache size, memory or disk, precision, device or max_epochs cannot change a draw."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are below 2**63


def keyed_generator(seed: int, *key) -> torch.Generator:
    return torch.Generator().manual_seed(draw_seed(seed, *key))


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container's or `taskset`'s limit),
    where the system tells it, not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def queue_workers() -> int:
    """How many `dvc queue` workers run on this machine (`dvc queue start -j N` starts N), each
    training its experiments beside the others; 1 where there are none, or no /proc to tell."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            count += b"queue-worker" in cmdline.read_bytes().split(b"\0")
        except OSError:  # a process that ended meanwhile
            pass
    return max(count, 1)


@functools.cache
def cpu_share() -> int:
    """The CPUs this process may keep busy: the usable ones shared among the processes of its
    run on this machine (torchrun's LOCAL_WORLD_SIZE) and among the experiments that the queue
    trains side by side; counted once per process, so that a run keeps one size throughout, and
    the same for torch's threads, the framing pool and prepare's decoders."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, usable_cpus() // (processes * queue_workers()))


def set_threads() -> int:
    """torch's threads: this process's cpu_share, never more than torch's own default (the
    physical cores). Set once, at the start: the number of threads changes the last bits of a
    CPU run's arithmetic (not its random draws), so metrics.json records it."""
    threads = min(torch.get_num_threads(), cpu_share())
    torch.set_num_threads(threads)
    return threads


def set_deterministic(on: bool) -> None:
    """`train.deterministic`: PyTorch's deterministic algorithms, for bit-identical GPU runs
    (cuDNN without autotuning, cuBLAS with a fixed workspace); an operation with no
    deterministic implementation then stops the run with PyTorch's error, naming it. The CPU's
    kernels already give the same bits run after run."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = on


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}[name]
    if not available:
        raise UserError(f"train.device: '{name}' is not available here; use auto or cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """bfloat16 matmuls are fast only with AVX-512 BF16 or AMX; elsewhere they are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to, or None for float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def environment(device: torch.device, dtype: torch.dtype | None) -> dict:
    """What a run ran on, recorded with its metrics so that `dvc exp show` tells runs apart."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "precision": "float32" if dtype is None else
            str(dtype).removeprefix("torch."), "torch": torch.__version__}


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast (the choice on GPUs without bfloat16), whose small
    gradients would otherwise flush to zero; for bfloat16 and float32 a scaler that does nothing."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """oneDNN convolutions ran 1.6 to 2x faster in channels_last on a 2-core AVX-512 CPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
