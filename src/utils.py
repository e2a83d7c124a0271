"""Small helpers every stage uses: one-line errors, atomic writes, seeding, device choice."""
from __future__ import annotations

import functools
import json
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from src.config import ConfigError


class StageError(RuntimeError):
    """A problem the user can fix; printed as one line, never as a traceback."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stage_main(fn):
    """Run a stage's main(): known problems become one line on stderr and exit status 1;
    SIGINT and SIGTERM stop it with one line (training resumes when the stage is rerun)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StageError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted; rerun the stage to continue", file=sys.stderr)
            sys.exit(130)
    return wrapper


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees a half
    written file, and a failure leaves the previous version in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise StageError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: say which file, keep the old one
        Path(tmp).unlink(missing_ok=True)
        raise StageError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def torch_save(path: Path, obj) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


def torch_load(path: Path):
    if not Path(path).exists():
        raise StageError(f"{path}: not found; run the stage that makes it first (dvc repro)")
    return torch.load(path, map_location="cpu", weights_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        raise StageError(f"train.device: '{name}' is not available here; use auto or cpu")
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
