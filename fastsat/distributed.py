"""The ranks of a job: this process's place in the process group, and, for grading on several
processes of one machine without torchrun, ``procs`` ranks started here
(torch.multiprocessing, spawn), joined in a gloo process group on a free loopback port — the group
``torchrun`` would give them — each with its share of the machine's threads. Rank 0's return value
comes back; a rank that fails or dies ends every rank, and the caller gets one line."""
from __future__ import annotations

import os
import socket

import torch

from .errors import InputError


def ranks() -> tuple[int, int]:
    """This process's rank and the world size of the initialised process group (0, 1 without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_WAITED = [0.0]  # seconds this process has spent in summed_over_ranks: waiting for the slowest rank


def waited() -> float:
    """Seconds this process has spent so far in ``summed_over_ranks`` (a running total, as
    ``time.process_time``): almost all of it waiting for the other ranks to finish their share."""
    return _WAITED[0]


def summed_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank, on every rank (``t`` itself without a process group); ``t``
    on the device the backend reduces on (CUDA for NCCL, the host for gloo)."""
    import time

    import torch.distributed as dist

    if ranks()[1] == 1:
        return t
    t0 = time.perf_counter()
    dist.all_reduce(t)
    _WAITED[0] += time.perf_counter() - t0
    return t


def barrier() -> None:
    """Every rank waits here for the others (nothing without a process group)."""
    import torch.distributed as dist

    if ranks()[1] > 1:
        dist.barrier()


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Under torchrun (``WORLD_SIZE`` > 1): the process group joined (NCCL on CUDA, gloo on CPU),
    one device per local rank; this process's rank and the world size."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, procs: int, port: int, threads: int, results, fn, args) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=procs)
    try:
        out = fn(*args)
        if rank == 0:
            results.put(out)
    finally:
        dist.destroy_process_group()


def run_ranks(procs: int, fn, *args):
    """``fn(*args)`` on ``procs`` local ranks (CPU, gloo); rank 0's result. ``fn`` and ``args`` must
    pickle (a model defined in an importable module, tensors)."""
    import torch.multiprocessing as mp

    if procs < 1:
        raise InputError(f"procs must be >= 1, got {procs}")
    if procs == 1:
        return fn(*args)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    threads = max(1, torch.get_num_threads() // procs)
    try:
        mp.spawn(_rank, args=(procs, _free_port(), threads, results, fn, args), nprocs=procs, join=True)
    except mp.ProcessRaisedException as e:
        last = [line for line in str(e).strip().splitlines() if line.strip()][-1]
        raise InputError(f"a rank failed, every rank stopped: {last}") from None
    except mp.ProcessExitedException as e:
        raise InputError(f"a rank died ({e}); every rank stopped, nothing was written") from None
    return results.get()
