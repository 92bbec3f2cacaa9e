"""Betons with bit-packed saliency: atomic writing, the JSON manifest beside them, validated opening.

Fields (stock FFCV, so a stock ``ffcv.loader.Loader`` reads them by name): ``image``
(RGBImageField, raw: exact pixels), ``label`` (IntField), ``sal`` / ``sal2`` (NDArrayField uint8
(nbytes,), layout in ``kernels/bits.py``) and, only where some samples lack a map, ``has_sal``
(IntField 0/1). ``X.beton.json`` records what a reader needs and what the file must be.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .kernels import bits as bitlayout
from .writers.common import InputError

FORMAT = "fastsat-beton"
FORMAT_VERSION = 1
SAL_FIELDS = ("sal", "sal2")
STATS_SAMPLES = 2048  # images read in the main process for mean/std (and early shape checks)


class BetonError(InputError):
    """A beton or its manifest is missing, corrupted or does not match."""


@dataclass
class SaliencyMap:
    """A saliency field to write: per-sample packed bits, or None to take them from the samples."""
    granularity: str  # element | pixel
    source: dict  # what produced it: {"method": "bbox"} or teacher, parameters, checkpoint hash
    packed: Optional[np.ndarray] = None  # (N, nbytes) uint8, when computed before the write


def manifest_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def file_hash(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Samples:
    """The indexable FFCV's forked writer workers read: (image, label[, sal bytes ...][, has_sal]).

    A failing sample cannot be reported from a worker (FFCV's writer would wait for it forever),
    so errors are appended to ``errors_file``, a blank sample is written instead, and the caller
    discards the whole file afterwards."""

    def __init__(self, samples, image_shape, maps: dict[str, SaliencyMap], with_flag: bool, errors_file: Path):
        self.samples, self.image_shape, self.maps = samples, tuple(image_shape), maps
        self.with_flag, self.errors_file = with_flag, errors_file

    def __len__(self):
        return len(self.samples)

    def sample(self, i):
        image, label, positive, *rest = self.samples[i]
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise InputError(f"sample {i}: image is {image.dtype} {image.shape}, expected uint8 {self.image_shape}")
        out = [image, int(label)]
        for name, m in self.maps.items():
            if m.packed is not None:
                out.append(m.packed[i])
            else:
                if positive is None or positive.shape != self.image_shape[:2]:
                    raise InputError(f"sample {i}: no {self.image_shape[:2]} saliency mask for field {name}")
                out.append(bitlayout.pack_np(positive[None])[0])
        if self.with_flag:
            out.append(int(rest[0]) if rest else 1)
        return tuple(out)

    def __getitem__(self, i):
        try:
            return self.sample(i)
        except Exception as e:  # noqa: BLE001 - reported by the parent, see class docstring
            with open(self.errors_file, "a") as f:
                f.write(f"{type(e).__name__}: {e}\n".replace("InputError: ", ""))
            blank = [np.zeros(self.image_shape, np.uint8), 0]
            blank += [np.zeros(bitlayout.num_bytes(self.image_shape, m.granularity), np.uint8) for m in self.maps.values()]
            return tuple(blank + ([0] if self.with_flag else []))


def _page_size(image_shape, maps) -> int:
    """FFCV page: a power of two holding ≥ 64 samples, in [2, 8] MiB (FFCV's minimum is 2 MiB).
    Each writer process leaves at most one page partly empty, so small sets stay small."""
    sample = int(np.prod(image_shape)) + sum(bitlayout.num_bytes(image_shape, m.granularity) for m in maps.values())
    return int(min(1 << 23, max(1 << 21, 1 << int(np.ceil(np.log2(64 * sample))))))


def _stats(samples, n: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] from up to STATS_SAMPLES evenly spaced samples."""
    idx = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLES)).astype(int))
    images = np.stack([samples[int(i)][0] for i in idx]).astype(np.float64) / 255
    return images.mean(axis=(0, 1, 2)).tolist(), np.maximum(images.std(axis=(0, 1, 2)), 1e-3).tolist()


def write_beton(samples, source, out: Path, *, maps: dict[str, SaliencyMap] | None = None,
                overwrite: bool = False, workers: int = -1, chunksize: int = 100) -> "BetonInfo":
    """Write ``samples`` (see ``writers/common.py``) to ``out`` atomically, with its manifest."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    n = len(samples)
    if n == 0:
        raise InputError(f"{source.dataset}/{source.split} has no samples")
    maps = dict(maps or {})
    for name, m in maps.items():
        if name not in SAL_FIELDS:
            raise ValueError(f"saliency field names are {SAL_FIELDS}, not {name!r}")
        nbytes = bitlayout.num_bytes(source.image_shape, m.granularity)
        if m.packed is not None and m.packed.shape != (n, nbytes):
            raise InputError(f"field {name}: packed bits are {m.packed.shape}, expected ({n}, {nbytes})")
    with_flag = getattr(samples, "keep_unmasked", False)
    mean, std = _stats(samples, n)  # reads a few samples here: bad input fails before any write

    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
    for name, m in maps.items():
        fields[name] = NDArrayField(dtype=np.dtype("uint8"), shape=(bitlayout.num_bytes(source.image_shape, m.granularity),))
    if with_flag:
        fields["has_sal"] = IntField()

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    errors = tmp.with_name(tmp.name + ".errors")
    try:
        dataset = _Samples(samples, source.image_shape, maps, with_flag, errors)
        writer = DatasetWriter(str(tmp), fields, page_size=_page_size(source.image_shape, maps), num_workers=workers)
        writer.from_indexed_dataset(dataset, chunksize=chunksize)
        if errors.exists():
            lines = errors.read_text().splitlines()
            raise InputError(lines[0] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "dataset": source.dataset, "split": source.split,
            "class_names": list(source.class_names), "num_classes": len(source.class_names),
            "image_shape": list(source.image_shape), "image_write_mode": "raw",
            "num_samples": n, "fields": list(fields),
            "saliency": {name: {"granularity": m.granularity,
                                "nbytes": bitlayout.num_bytes(source.image_shape, m.granularity),
                                "source": m.source} for name, m in maps.items()},
            "mean": mean, "std": std, "notes": list(source.notes),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "file_size": tmp.stat().st_size, "blake2b": file_hash(tmp),
        }
        _check_header(tmp, manifest, name_for_errors=out)
        man_tmp = manifest_path(tmp)
        man_tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, out)
        os.replace(man_tmp, manifest_path(out))
    finally:
        for leftover in (tmp, errors, manifest_path(tmp)):
            leftover.unlink(missing_ok=True)
    return BetonInfo(out, manifest)  # validated above, before the rename


@dataclass
class BetonInfo:
    """What loaders need from a validated beton."""
    path: Path
    manifest: dict

    @property
    def num_samples(self) -> int:
        return self.manifest["num_samples"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def saliency(self) -> dict:
        return self.manifest["saliency"]

    def granularity(self, field: str = "sal") -> str:
        if field not in self.saliency:
            raise BetonError(f"{self.path}: no saliency field {field!r} (has {sorted(self.saliency) or 'none'})")
        return self.saliency[field]["granularity"]


def _check_header(path: Path, manifest: dict, name_for_errors: Path) -> None:
    """Fields, types, shapes and sample count as FFCV's own reader sees them."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.reader import Reader

    try:
        reader = Reader(str(path))
    except Exception as e:  # noqa: BLE001 - FFCV raises many kinds on a damaged header
        raise BetonError(f"{name_for_errors}: not a readable beton ({type(e).__name__}: {e})") from None
    if reader.num_samples != manifest["num_samples"]:
        raise BetonError(f"{name_for_errors}: {reader.num_samples} samples but the manifest says {manifest['num_samples']}")
    names = list(reader.handlers)
    if names != manifest["fields"]:
        raise BetonError(f"{name_for_errors}: fields {names} but the manifest says {manifest['fields']}")
    images = reader.metadata["f0"]  # RGBImageField metadata: mode (0 jpeg, 1 raw), width, height
    h, w, _ = manifest["image_shape"]
    if len(images) and not ((images["height"] == h) & (images["width"] == w)).all():
        raise BetonError(f"{name_for_errors}: images are not all {h}x{w} as the manifest says")
    expected = {"image": RGBImageField, "label": IntField, "has_sal": IntField}
    for name, handler in reader.handlers.items():
        kind = expected.get(name, NDArrayField)
        if not isinstance(handler, kind):
            raise BetonError(f"{name_for_errors}: field {name} is {type(handler).__name__}, expected {kind.__name__}")
        if name in manifest["saliency"]:
            shape = tuple(handler.shape)
            nbytes = bitlayout.num_bytes(tuple(manifest["image_shape"]), manifest["saliency"][name]["granularity"])
            if handler.dtype != np.uint8 or shape != (nbytes,):
                raise BetonError(f"{name_for_errors}: field {name} is {handler.dtype} {shape}, expected uint8 ({nbytes},)")


def open_beton(path: Path, verify: bool = False) -> BetonInfo:
    """Validate a beton against its manifest (size, header, fields, shapes, count; the content hash
    too with ``verify``) and return what loaders need. Any mismatch: one-line BetonError."""
    path = Path(path)
    if not path.is_file():
        raise BetonError(f"{path}: no such beton")
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise BetonError(f"{path}: manifest {mpath.name} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BetonError(f"{mpath}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BetonError(f"{mpath}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    size = path.stat().st_size
    if size != manifest["file_size"]:
        raise BetonError(f"{path}: {size} bytes but the manifest says {manifest['file_size']} (truncated or replaced?)")
    _check_header(path, manifest, path)
    if verify and file_hash(path) != manifest["blake2b"]:
        raise BetonError(f"{path}: content hash differs from the manifest (corrupted)")
    return BetonInfo(path, manifest)
