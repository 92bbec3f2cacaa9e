"""Loaders of :class:`~fastsat.batch.Batch` (x (N, H, W, C) uint8 on the device, y, bits) for training and evaluation.

Two sources with one interface, ``loader.epoch(e)`` → iterator of batches, over all samples or
the ``indices`` given (a holdout split, an evaluation sample):
  * :class:`FFCVBatches` — the stock FFCV Loader (CPU decode, pinned memory, non-blocking copy),
    RANDOM order seeded by (seed + epoch), so any epoch can be replayed (resume);
  * :class:`ResidentBatches` — the samples read once with fastsat's own reader (``reader.py``,
    no ffcv needed) and held on the device, batches gathered there (no host→device traffic).
Saliency bits go to the SAT kernel untouched; augmentation happens after it (``augment.py``).
Two maps asked for (``--sal-mix``) are mixed here, per sample, from the step's own stream
(:func:`mix_saliency`), so a batch always carries one map. Samples a beton marks ``has_sal = 0``
(written without a map) get fresh random bits in every batch (drawn from (seed, epoch, batch)),
so SAT gives them pure noise rather than a fake all −1 map.
"""
from __future__ import annotations

import sys
from typing import Iterator, Optional

import numpy as np
import torch

from .beton import BetonInfo
from .ffcv_import import available as ffcv_available
from .ffcv_import import ffcv
from .batch import Batch, step_seed
from .kernels.spec import derive_seed
from .reader import BetonReader


def mix_saliency(bits: torch.Tensor, bits2: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample coin between two packed maps of equal layout (paper Table 7)."""
    coin = torch.rand(bits.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(coin.to(bits.device).view(-1, 1), bits, bits2)


def _quiet_numba_finalizer() -> None:
    """FFCV 1.0.2: every Loader after the first makes a numba dispatcher finalizer raise a harmless
    KeyError at garbage collection; keep it off stderr, pass every other unraisable exception on."""
    previous = sys.unraisablehook
    if getattr(previous, "_fastsat", False):
        return

    def hook(unraisable):
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if unraisable.exc_type is KeyError and tb is not None and "numba" in tb.tb_frame.f_code.co_filename:
            return
        previous(unraisable)

    hook._fastsat = True
    sys.unraisablehook = hook


def _loader(info: BetonInfo, fields: list[str], *, batch_size: int, workers: int, device: torch.device,
            train: bool, seed: int, distributed: bool = False, indices=None):
    IntDecoder = ffcv("ffcv.fields.basics").IntDecoder
    decoders = ffcv("ffcv.fields.decoders")
    loader_module, transforms = ffcv("ffcv.loader"), ffcv("ffcv.transforms")
    Loader, OrderOption = loader_module.Loader, loader_module.OrderOption
    Squeeze, ToDevice, ToTensor = transforms.Squeeze, transforms.ToDevice, transforms.ToTensor
    NDArrayDecoder, SimpleRGBImageDecoder = decoders.NDArrayDecoder, decoders.SimpleRGBImageDecoder
    _quiet_numba_finalizer()
    to = [ToTensor(), ToDevice(device, non_blocking=True)]
    image = SimpleRGBImageDecoder() if info.image_shape[2] == 3 else NDArrayDecoder()  # see beton.py
    pipelines = {"image": [image, *to], "label": [IntDecoder(), *to, Squeeze(1)]}
    for name in fields:
        pipelines[name] = [IntDecoder() if name == "has_sal" else NDArrayDecoder(), *to]
    for name in info.manifest["fields"]:
        pipelines.setdefault(name, None)  # fields not asked for are not decoded
    threads = torch.get_num_threads()
    loader = Loader(str(info.path), batch_size=batch_size, num_workers=workers,
                    order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL, pipelines=pipelines,
                    drop_last=train, seed=seed, distributed=distributed, os_cache=True, indices=indices)
    torch.set_num_threads(threads)  # FFCV sets torch's thread count to `workers` for the process
    return loader


class _Batches:
    """What both loaders share: fields, seed, rank; stored maps → one :class:`Batch`."""

    def __init__(self, info: BetonInfo, fields: list[str], seed: int, rank: int):
        self.nsal, self.seed, self.rank = len(fields), seed, rank
        self.flagged = bool(fields) and "has_sal" in info.manifest["fields"]
        self.granularity = info.granularity(fields[0]) if fields else "element"

    def batch(self, x, y, sal, sal2, has, epoch: int, i: int, indices=None) -> Batch:
        sal = _fill_missing(sal, has, self.seed, self.rank, epoch, i, "sal")
        if self.nsal == 2:
            gen = torch.Generator(device=sal.device)
            sal2 = _fill_missing(sal2, has, self.seed, self.rank, epoch, i, "sal2")
            sal = mix_saliency(sal, sal2, gen.manual_seed(derive_seed(step_seed(self.seed, self.rank, epoch, i),
                                                                      "map_mix")))
        return Batch(x, y, sal, self.granularity, indices)


def _fill_missing(sal: Optional[torch.Tensor], has: Optional[torch.Tensor], seed: int, rank: int, epoch: int,
                  i: int, field: str):
    """Random bits for the rows whose sample has no saliency map (``has == 0``): a stream of their
    own per field, rank, epoch and batch."""
    if sal is None or has is None:
        return sal
    gen = torch.Generator(device=sal.device).manual_seed(derive_seed(seed, "missing_map", field, rank, epoch, i))
    noise = torch.randint(0, 256, sal.shape, generator=gen, device=sal.device, dtype=torch.uint8)
    return torch.where(has.view(-1, 1).bool(), sal, noise)


class FFCVBatches(_Batches):
    """The FFCV loader over a beton (row indices unknown: FFCV does not yield them)."""

    def __init__(self, info: BetonInfo, fields: list[str], *, batch_size: int, workers: int,
                 device: torch.device, train: bool, seed: int, distributed: bool = False, indices=None, rank: int = 0):
        super().__init__(info, fields, seed, rank)
        self.loader = _loader(info, fields + (["has_sal"] if self.flagged else []), batch_size=batch_size,
                              workers=workers, device=device, train=train, seed=order_seed(seed),
                              distributed=distributed, indices=indices)

    def __len__(self):
        return len(self.loader)

    def raw_epoch(self, epoch: int):
        """(x, y, sal, sal2, has_sal) as stored, Nones where absent."""
        self.loader.next_epoch = epoch  # FFCV's RANDOM order is a permutation seeded by seed + epoch
        threads = torch.get_num_threads()
        for batch in self.loader:
            torch.set_num_threads(threads)  # FFCV's iterator thread resets it when it starts running
            x, y, *rest = batch
            has = rest.pop().view(-1) if self.flagged else None
            rest += [None] * (2 - len(rest))
            yield x, y.long().view(-1), rest[0], rest[1], has

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for i, stored in enumerate(self.raw_epoch(epoch)):
            yield self.batch(*stored, epoch, i)


class ResidentBatches(_Batches):
    """The samples (all, or ``indices``) on ``device``, read once with ``BetonReader``; batches are
    gathered there. Training order: a permutation seeded by seed + epoch, like FFCV's RANDOM."""

    def __init__(self, info: BetonInfo, fields: list[str], *, batch_size: int, device: torch.device, train: bool,
                 seed: int, indices=None, rank: int = 0, **_):
        super().__init__(info, fields, seed, rank)
        reader = BetonReader(info.path)
        names = ["image", "label", *fields, *([None] * (2 - len(fields))), "has_sal" if self.flagged else None]
        self.tensors = [None if n is None else torch.from_numpy(reader.read(n, indices)).to(device) for n in names]
        rows = np.arange(info.num_samples) if indices is None else np.asarray(indices)
        self.rows = torch.as_tensor(rows).to(device)  # beside the samples: no host sync per batch
        self.batch_size, self.train = batch_size, train

    def __len__(self):
        n = len(self.tensors[1])
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n = len(self.tensors[1])
        if self.train:
            order = torch.from_numpy(np.random.default_rng(order_seed(self.seed) + epoch).permutation(n))
        else:
            order = torch.arange(n)
        order = order.to(self.tensors[1].device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            stored = (None if t is None else t[idx] for t in self.tensors)
            yield self.batch(*stored, epoch, i, indices=self.rows[idx])


def order_seed(seed: int) -> int:
    """The sample order's own stream (FFCV's RANDOM order permutes with this seed + epoch)."""
    return derive_seed(seed, "order") % 2 ** 31


def make_batches(info: BetonInfo, fields: list[str], *, batch_size: int, workers: int, device: torch.device,
                 train: bool, seed: int, resident: bool = False, distributed: bool = False, indices=None,
                 rank: int = 0):
    """The FFCV streaming loader, or the resident one (``resident``, or whenever ffcv is missing)."""
    if (resident or not ffcv_available()) and not distributed:
        return ResidentBatches(info, fields, batch_size=batch_size, device=device, train=train, seed=seed,
                               indices=indices, rank=rank)
    return FFCVBatches(info, fields, batch_size=batch_size, workers=workers, device=device, train=train, seed=seed,
                       distributed=distributed, indices=indices, rank=rank)
