"""Atomic files: write under a hidden temporary name in the same folder, then rename.

A reader never sees a half-written file. Temporary names carry the writer's pid
(``.NAME.tmp-PID``), so the next write to the same path removes those of dead processes
(after a kill -9 or a full disk) and leaves those of live ones alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(path: Path, tag: str = "tmp") -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def stale_temps(path: Path, tag: str = "tmp") -> list[Path]:
    """Temporaries of ``path`` left by processes that no longer run."""
    path = Path(path)
    found = []
    if not path.parent.is_dir():
        return found
    prefix = f".{path.name}.{tag}-"
    for p in path.parent.iterdir():
        if p.name.startswith(prefix):
            pid = p.name[len(prefix):].split(".")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                found.append(p)
    return found


def remove_stale_temps(path: Path) -> None:
    for p in stale_temps(path):
        p.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename to ``path``; the temporary goes on any failure (full disk, signal)."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class Claim:
    """``with Claim(path) as mine:``: ``mine`` is True for the one process that holds the lock on
    ``.NAME.lock`` (an advisory ``flock``, which the kernel drops when its process ends, even by
    kill -9) until the block ends. Lets several processes share one folder of work, each step done
    once."""

    def __init__(self, path: Path):
        path = Path(path)
        self.lock, self.fd = path.with_name(f".{path.name}.lock"), None

    def __enter__(self) -> bool:
        import fcntl

        self.lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.lock.unlink(missing_ok=True)  # (a process that still got this inode re-checks
            os.close(self.fd)  # whether the work is done before doing it: see Claim's users)
            self.fd = None


class Locked:
    """``with Locked(path):`` waits for, then holds, an advisory ``flock`` on ``.NAME.lock`` (kept on
    disk, so every waiter locks the same inode): read-modify-write of a file shared by processes."""

    def __init__(self, path: Path):
        path = Path(path)
        self.lock, self.fd = path.with_name(f".{path.name}.lock"), None

    def __enter__(self) -> None:
        import fcntl

        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing drops the lock
        self.fd = None
