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


def shown_argument(arg: str) -> str:
    """A path outside the repository is the measuring machine's own: the file shows it as
    /path/to/<name>, so that the docs never cite a path their readers do not have."""
    if not (Path(arg).is_absolute() or arg.startswith("..")):
        return arg
    inside = Path(arg).resolve().is_relative_to(Path.cwd().resolve())
    return arg if inside else f"/path/to/{Path(arg).name}"


def write_measurement(path: Path, module: str, args: list[str], text: str) -> None:
    """`text` to `path`, under the command `python -m <module> <args>`, quoted for a shell."""
    command = shlex.join(["python", "-m", module, *map(shown_argument, args)])
    write_text(Path(path), f"`{command}`\n\n{text.rstrip()}\n")
