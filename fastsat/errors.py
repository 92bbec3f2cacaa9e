"""User errors and the one way every entry point reports them.

``InputError`` is bad user input (a flag, a file, a layout): it reaches the user as one line,
``error: <message>``, and exit code 2. This module imports nothing from the project, so every
layer (``kernels``, ``writers``, ``fastsat``) may raise it.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from typing import Callable


WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT}  # disk or folder
MASKED_EXIT = 3  # a verdict was written, but a gradient-masking check failed (--no-fail-on-masking: 0)


class InputError(ValueError):
    """Bad user input (missing files, wrong layout, out-of-range flags): reported in one line."""


def _stop_importing(signum, frame):
    print("error: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def quiet_ctrl_c() -> None:
    """For a module run as a command, before its heavy imports: Ctrl-C while they load ends the
    process with the one line and 130, not a traceback from inside an import; ``run_cli`` takes
    over when it starts."""
    signal.signal(signal.SIGINT, _stop_importing)


def run_cli(body: Callable[[], object]) -> int:
    """Run an entry point's ``body`` (flag parsing included); an InputError becomes ``error: …`` on
    stderr and exit code 2.

    ``body`` returns text to print on success (or None), or ``(text, exit code)``. A reader that
    goes away before that text is printed (``… --status | head -1``) ends the command as a pipe's
    writer ends, quietly with 141 (128 + SIGPIPE). A write refused by the disk or the folder (full,
    read-only, over a size limit) is one line too. Nothing else is caught: a bug keeps its traceback."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _stop_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt again
    try:
        text = body()
        text, code = text if isinstance(text, tuple) else (text, 0)
    except InputError as e:
        _end_progress()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress()
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk or a read-only folder is never a bug: one line
        if e.errno not in WRITE_ERRNOS:
            raise
        _end_progress()
        print(f"error: {e.filename or 'a file'}: {e.strerror} (a full disk, a read-only folder or a missing "
              f"permission)", file=sys.stderr)
        return 2
    if text:
        try:
            print(text, flush=True)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 141
    return code


def _end_progress() -> None:
    """Progress bars still drawn are closed, so the error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def masked_exit(reports: list[dict], fail: bool) -> int:
    """``MASKED_EXIT`` (with a one-line warning) when any report failed a masking check and ``fail``."""
    masked = [r for r in reports if r.get("masked")]
    for r in masked:
        print(f"warning: gradient masking suspected ({', '.join(r['failed_checks'])} failed): "
              f"the robustness numbers of {r.get('title', 'this model')} are not a verdict", file=sys.stderr)
    return MASKED_EXIT if masked and fail else 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every flag's default appended to its help, unless the
    help states it already or there is none to state (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("(default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or action.default == []):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in ``--help`` and bad flags reported as one ``error:`` line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, formatter_class=HelpFormatter)

    def error(self, message):
        raise InputError(f"{message} (see --help)")
