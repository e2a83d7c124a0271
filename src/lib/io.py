"""Files: atomic writes, reads that fail in one line, memory-mapped arrays, and the code a module
runs."""
from __future__ import annotations

import ast
import errno
import hashlib
import json
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

from src.lib.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def not_found(path: Path) -> UserError:
    return UserError(f"{path}: not found; run `dvc repro` to make it")


def cannot_write(path: Path, e: OSError) -> UserError:
    """One line for a failed write; a full disk says so and where (torch and numpy report it as
    their own errors, or as a bare errno)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"cannot write {path}: the disk is full; free space on the disk that "
                         f"holds {Path(path).resolve().parent} and rerun")
    return UserError(f"cannot write {path}: {e.strerror or e}")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees a half
    written file, and a failure leaves the previous version in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise cannot_write(path, e) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder: say which file, keep the old one
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """The one writer of Markdown tables: cells as given, already formatted."""
    return "".join(markdown_row(line) + "\n" for line in [header, ["---"] * len(header), *rows])


def read_json(path: Path):
    if not Path(path).exists():
        raise not_found(path)
    return json.loads(Path(path).read_text())


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_files(module: str, root: Path = Path(".")) -> list[Path]:
    """The project's .py files that `module` (e.g. "src.train") runs: itself and what it
    imports from `src`, directly or through other project modules. dvc.yaml lists these as the
    stage's code deps, and training resumes only while they are unchanged."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = root / (name.replace(".", "/") + ".py")
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] == "src":
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return sorted(p.relative_to(root) for p in seen)


class MappedArray:
    """A .npy file, memory-mapped: rows are copied out or in on access, and the mapped pages are
    then dropped from this process (the OS page cache keeps what it can), so that a file far
    larger than memory costs the resident memory of one access, not of everything touched."""

    def __init__(self, path: Path, writable: bool = False):
        # absolute: the file stays the same one if the process (or a framing worker started
        # elsewhere) changes its working folder
        self.path = Path(path).resolve()
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
        with open(self.path, "r+b" if writable else "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE if writable
                                  else mmap.ACCESS_READ)
        self.array = np.ndarray(shape, dtype, buffer=self._map, offset=offset)

    @classmethod
    def create(cls, path: Path, shape: tuple, dtype) -> MappedArray:
        """A new zero-filled file, open for writing. Its blocks are allocated now: a write
        through the map to a sparse file on a full disk would kill the process (SIGBUS)."""
        dtype = np.dtype(dtype)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {
                    "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": tuple(shape)})
                size = f.tell() + int(np.prod(shape)) * dtype.itemsize
                f.truncate(size)
                if hasattr(os, "posix_fallocate"):  # not on macOS or Windows
                    os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            Path(path).unlink(missing_ok=True)
            raise cannot_write(path, e) from None
        return cls(path, writable=True)

    def read(self, rows) -> np.ndarray:
        out = np.array(self.array[rows])
        self._drop_pages()
        return out

    def write(self, rows, values) -> None:
        self.array[rows] = values
        self._drop_pages()

    def _drop_pages(self) -> None:
        if hasattr(self._map, "madvise"):  # not on Windows; there the OS trims pages itself
            self._map.madvise(mmap.MADV_DONTNEED)
