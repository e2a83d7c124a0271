"""What the developer tools' measurement files share: the command that made the file, at its top,
so that anyone can measure again (write_measurement), and the name of the CPU (cpu_name)."""
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
