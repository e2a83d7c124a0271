"""What a developer tool's measurement file says besides its table: the command that made it,
first, so that anyone can measure again, and the CPU it ran on, in the table's own header."""
from __future__ import annotations

import platform
import shlex
from pathlib import Path

from src.lib.io import write_text


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_measurement(path: Path, module: str, args: list[str], text: str) -> None:
    """`text` to `path`, under the command `python -m <module> <args>`, quoted for a shell."""
    write_text(Path(path), f"`{shlex.join(['python', '-m', module, *args])}`\n\n{text.rstrip()}\n")
