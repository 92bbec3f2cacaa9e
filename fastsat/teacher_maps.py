"""Teacher maps of a split in bounded memory: samples read from the layout chunk by chunk, each
chunk's maps computed, packed at once (1 bit per element) and written atomically into
``OUT.chunks/``, a folder named after the output that records the request it belongs to
(``request.json``). Peak memory depends on the chunk and batch sizes, never on the split's size.

A killed job keeps its finished chunks; the same command goes on from the next one, after checking
that the folder holds chunks of the same request (teachers' hashes, methods, parameters, layout,
split, chunk and batch sizes, device type). The ranks of a process group (torchrun) take the chunks
in turn. Chunks and teacher batches start at the same samples whatever the number of ranks (and as
the whole split in one pass, chunks being whole batches), so the beton is the same byte for byte.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_write, atomic_write_text
from .kernels import bits as bitlayout
from .saliency import SALIENCY, NonFiniteMap, compute

CHUNK = 1024  # samples per chunk (a multiple of the teacher batch)
STAGES = ("read", "teacher", "pack", "store")


def chunk_folder(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".chunks")


def chunk_path(folder: Path, j: int) -> Path:
    return folder / f"chunk-{j:06d}.npz"


def request(source, n: int, plan, teacher_hashes: dict, options: dict, sal_batch: int, chunk: int, device) -> dict:
    """Everything the chunks' bits depend on."""
    maps = [{"method": m, "params": p, **({"teacher_blake2b": teacher_hashes[t]} if t is not None else {})}
            for m, t, p in plan]
    given = {k: str(Path(v).resolve()) if k.endswith("root") else v for k, v in options.items() if v is not None}
    return {"dataset": source.dataset, "split": source.split, "options": given, "samples": n,
            "image_shape": list(source.image_shape), "maps": maps, "sal_batch": sal_batch, "chunk": chunk,
            "device": device.type}


def claim(folder: Path, req: dict) -> None:
    """``folder`` made for ``req``, or found holding chunks of the same request; any other: one line."""
    path = folder / "request.json"
    if not path.is_file():
        folder.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps(req, indent=1))
        return
    try:
        had = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e}); remove {folder} to start again") from None
    diff = [k for k in sorted(set(had) | set(req)) if had.get(k) != req.get(k)]
    if diff:
        k = diff[0]
        raise InputError(f"{folder} holds chunks of another request ({k}: {had.get(k)!r} → {req.get(k)!r}); "
                         f"remove it, or write to another --out")


def compute_chunks(samples, plan, teachers: dict, req: dict, folder: Path, device, rank: int = 0, world: int = 1,
                   progress: bool = True) -> dict[str, float]:
    """This rank's share of the chunks not yet in ``folder`` (chunk j goes to rank j mod world),
    each written atomically; seconds spent per stage."""
    from tqdm import tqdm

    n, size = req["samples"], req["chunk"]
    mine = [j for j in range(math.ceil(n / size)) if j % world == rank and not chunk_path(folder, j).is_file()]
    seconds = dict.fromkeys(STAGES, 0.0)
    for j in tqdm(mine, desc=f"teacher maps, chunks of {size}" + (f" (rank {rank})" if world > 1 else ""),
                  disable=not progress):
        start = j * size
        t0 = time.perf_counter()
        images, labels, masks = read_chunk(samples, start, min(n, start + size))
        t1 = time.perf_counter()
        maps, zeros = chunk_maps(images, labels, masks, plan, teachers, req, device, start)
        t2 = time.perf_counter()
        packed = {f"sal{i + 1}": bitlayout.pack_np(p) for i, p in enumerate(maps)}
        t3 = time.perf_counter()
        store(chunk_path(folder, j), packed, zeros)
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)):
            seconds[stage] += dt
    return seconds


def read_chunk(samples, start: int, end: int):
    """Images, labels and weak masks of samples [start, end), read one by one from the layout."""
    images, labels, masks = [], [], []
    for i in range(start, end):
        image, label, positive, *_ = samples[i]
        images.append(image)
        labels.append(label)
        masks.append(positive)
    return np.stack(images), np.asarray(labels), None if masks[0] is None else np.stack(masks)


def granularities(plan) -> list[str]:
    """The stored granularity of each planned map: of two granularities, both per element."""
    own = [SALIENCY.get(m).granularity if m in SALIENCY else "pixel" for m, _, _ in plan]
    return own if len(set(own)) == 1 else ["element"] * len(own)


def chunk_maps(images, labels, masks, plan, teachers: dict, req: dict, device, start: int):
    """(positive masks per planned map, as stored; all-zero map count per map) of one chunk."""
    maps, zeros = [], []
    for (method, teacher, params), g in zip(plan, granularities(plan)):
        if method in SALIENCY:
            ckpt = teachers.get(teacher)
            try:
                positive, z = compute(method, ckpt and ckpt["model"], images, labels, batch_size=req["sal_batch"],
                                      device=device, params=params, progress=False)
            except NonFiniteMap as e:
                raise NonFiniteMap([start + i for i in e.indices]) from None
        else:
            positive, z = masks, 0
        if g == "element" and positive.ndim == 3:  # a pixel map stored beside an element map
            positive = np.repeat(positive[..., None], images.shape[3], axis=3)
        maps.append(positive)
        zeros.append(z)
    return maps, zeros


def store(path: Path, packed: dict, zeros: list[int]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, zeros=np.asarray(zeros, np.int64), **packed)
    try:
        atomic_write(path, write)
    except OSError as e:
        raise InputError(f"could not write {path}: {e.strerror or e} (full disk?); the finished chunks are kept, "
                         f"the same command goes on from them") from None


def zero_counts(folder: Path, req: dict) -> list[int]:
    """All-zero maps per planned map, over every chunk."""
    total = np.zeros(len(req["maps"]), np.int64)
    for j in range(math.ceil(req["samples"] / req["chunk"])):
        with np.load(chunk_path(folder, j)) as z:
            total += z["zeros"]
    return total.tolist()


class ChunkedBits:
    """One field's packed bits, (samples, nbytes), read from the chunk files as the beton writer asks
    for samples; each process keeps the last chunk it read."""

    def __init__(self, folder: Path, field: str, req: dict, nbytes: int):
        self.folder, self.field, self.size = folder, field, req["chunk"]
        self.shape = (req["samples"], nbytes)
        self.loaded, self.rows = -1, None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        j = int(i) // self.size
        if j != self.loaded:
            with np.load(chunk_path(self.folder, j)) as z:
                self.rows = z[self.field]
            self.loaded = j
        return self.rows[int(i) - j * self.size]
