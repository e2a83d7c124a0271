"""One error convention for every command (stages, predict, tools): a problem the user can fix
is one line `error: ...` on stderr and exit status 1, never a traceback; an interrupt is one line
and exit status 130."""
from __future__ import annotations

import functools
import signal
import sys


class UserError(Exception):
    """A problem the user can fix: the message names the file or parameter and what to do."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def command(main):
    """Wrap a command's main(): its return value is the exit status (None is 0)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        # `kill` stops like Ctrl-C, so state is kept; the caller's handler is back afterwards
        # (a test that calls main() in its own process keeps its own)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; rerun the command to continue", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper
