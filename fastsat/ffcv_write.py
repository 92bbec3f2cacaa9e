"""FFCV's ``DatasetWriter``, made to end: a dead writer process, a full disk or Ctrl-C ends the whole
write at once, with every writer process gone, FFCV's queues and shared memory released, and one
exception in the calling thread.

FFCV's parent process waits forever for a sample whose writer process died (``Errno 28`` on a full
disk), and its queues' feeder threads keep the interpreter from exiting once the writers are gone.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError
from .ffcv_import import ffcv
from .reader import INT, NDARRAY, RGB


class WriterDied(InputError):
    """An FFCV writer process ended with an error (full disk, a signal, ...)."""


def ffcv_fields(fields: dict[str, tuple[int, tuple]]) -> dict:
    """ffcv Field objects of a field spec (see ``reader.write_direct``)."""
    f = ffcv("ffcv.fields")
    make = {INT: lambda shape: f.IntField(), RGB: lambda shape: f.RGBImageField(write_mode="raw"),
            NDARRAY: lambda shape: f.NDArrayField(dtype=np.dtype("uint8"), shape=shape)}
    return {name: make[kind](shape) for name, (kind, shape) in fields.items()}


def ffcv_write(path: Path, fields: dict, dataset, page_size: int, workers: int, chunksize: int) -> None:
    """Write ``dataset`` (an indexable of sample tuples) to ``path`` with FFCV's writer processes."""
    writer = ffcv("ffcv.writer").DatasetWriter(str(path), ffcv_fields(fields), page_size=page_size,
                                                 num_workers=workers)
    with _Guard(writer):
        writer.from_indexed_dataset(dataset, chunksize=chunksize)


def die_with(parent: int) -> None:
    """In an FFCV writer process: die when ``parent`` (the process that writes) dies, even by
    kill -9 (Linux parent-death signal), instead of blocking forever as an orphan."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


class _Guard:
    """Around one FFCV write: a watchdog thread that notices a failed writer process, Ctrl-C
    remembered even where FFCV swallows it, and a cleanup no signal can cut short.

    An exception raised by a signal handler inside library code that holds a lock it took in a
    Python ``__enter__`` (a queue's condition while FFCV fills its work queue, a thread start) leaves
    that lock held, and the cleanup then waits on it forever. So Ctrl-C and a dead writer are raised
    only in FFCV's own loop (``SAFE_FRAMES``), where nothing is held; elsewhere they are remembered
    and the watchdog signals again every 0.2 s — FFCV's loop polls every 0.1 s — and after
    ``PATIENCE`` seconds they are raised wherever the main thread is (it is then blocked on writers
    that are gone, the case the watchdog exists for).

    Precedence of outcomes: Ctrl-C (KeyboardInterrupt), else the body's own exception, else a dead
    writer (``WriterDied``)."""

    SAFE_FRAMES = ("_write_common", "from_indexed_dataset", "ffcv_write")
    PATIENCE = 2.0

    def __init__(self, writer):
        self.writer, self.seen, self.failed, self.interrupted, self.closing = writer, set(), [], False, False
        self.raised, self.pending_since = False, None
        self.done = threading.Event()
        self.main = threading.main_thread() is threading.current_thread()

    def watch(self):
        while not self.done.wait(0.2):
            if not self.failed:
                self.seen.update(multiprocessing.active_children())
                self.failed += [p.exitcode for p in self.seen if p.exitcode not in (None, 0)][:1]
            if (self.interrupted or self.failed) and not self.raised and self.main:
                # a real signal: it also wakes a main thread blocked in a lock or a read
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT if self.interrupted else signal.SIGUSR1)

    def may_raise(self, frame) -> bool:
        """Whether a handler may raise now, in ``frame``; remembers that something is pending."""
        if self.closing or self.raised:
            return False
        self.pending_since = self.pending_since or time.monotonic()
        if (frame is not None and frame.f_code.co_name in self.SAFE_FRAMES) or \
                time.monotonic() - self.pending_since > self.PATIENCE:
            self.raised = True
        return self.raised

    def died(self, signum, frame):  # the watchdog's signal
        if self.may_raise(frame):
            raise self.error()

    def error(self) -> WriterDied:
        return WriterDied(f"an FFCV writer process failed (exit code {self.failed[0] if self.failed else '?'}: "
                          f"full disk or killed?); nothing was written")

    def interrupt(self, signum, frame):  # remembered too: an interrupt that lands while FFCV forks is
        self.interrupted = True  # swallowed there ("Exception ignored in ... _releaseLock")
        if self.may_raise(frame):
            raise KeyboardInterrupt

    def unraisable(self, info):  # that swallowed interrupt: honoured on exit, not printed
        if isinstance(info.exc_value, KeyboardInterrupt):
            self.interrupted = True
        else:
            self.previous_hook(info)

    def __enter__(self):
        _quiet_writers(True)
        self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable
        if self.main:
            self.previous = {signal.SIGUSR1: signal.signal(signal.SIGUSR1, self.died),
                             signal.SIGINT: signal.signal(signal.SIGINT, self.interrupt)}
        self.watchdog = threading.Thread(target=self.watch, daemon=True)
        self.watchdog.start()
        return self

    def __exit__(self, kind, value, tb):
        self.closing = True
        with _shielded(self.main, then=self.previous if self.main else None):  # the caller's handlers back
            self.done.set()
            self.watchdog.join(5)
            if kind is not None or self.interrupted or self.failed:
                self.release()
            _quiet_writers(False)
            sys.unraisablehook = self.previous_hook
        if self.interrupted:
            raise KeyboardInterrupt
        if kind is None and self.failed:
            raise self.error()
        return False

    def release(self):
        """Every writer process killed and reaped, FFCV's queues and shared metadata released, its
        progress bar closed (so the one error line that follows starts a line of its own)."""
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        for p in self.seen | set(multiprocessing.active_children()):
            p.kill()
            p.join(5)
        _drop_queues()
        sm = getattr(self.writer, "metadata_sm", None)
        if sm is not None:
            sm.close()
            try:
                sm.unlink()
            except FileNotFoundError:  # FFCV got as far as unlinking it
                pass


@contextmanager
def _shielded(main: bool, then: dict | None = None):
    """SIGINT and SIGUSR1 held off (main thread only): a second Ctrl-C or the watchdog's signal
    cannot cut the cleanup short and leave writer processes or feeder threads behind. On the way
    out, the handlers ``then`` (default: those found on the way in) are installed."""
    if not main:
        yield
        return
    previous = {n: signal.signal(n, signal.SIG_IGN) for n in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for number, handler in {**previous, **(then or {})}.items():
            signal.signal(number, handler)


_QUIET = {"on": False, "hooked": False}


def _quiet_writers(on: bool) -> None:
    """While FFCV forks its writers, each child's stderr goes to /dev/null: a writer that fails
    (full disk) would print its own traceback before this process's one ``error:`` line. Its exit
    code still reaches the watchdog, and sample read errors are recorded by the dataset."""
    def child():
        if _QUIET["on"]:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
    if not _QUIET["hooked"]:
        os.register_at_fork(after_in_child=child)
        _QUIET["hooked"] = True
    _QUIET["on"] = on


def _drop_queues() -> None:
    """FFCV's work queues still hold chunks for the killed writers; without this, the exit of this
    process would wait forever for their feeder threads to hand the chunks to nobody."""
    import gc
    from multiprocessing.queues import Queue

    for q in [o for o in gc.get_objects() if type(o) is Queue]:
        q.cancel_join_thread()
        q.close()
