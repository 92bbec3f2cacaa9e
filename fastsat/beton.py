"""Betons with bit-packed saliency: atomic writing, the JSON manifest beside them, validated opening.

Fields (stock FFCV, so a stock ``ffcv.loader.Loader`` reads them by name): ``image``
(RGBImageField, raw: exact pixels; images of other channel counts, e.g. grayscale (H, W, 1), an
NDArrayField uint8 (H, W, C): RGBImageField holds three channels only), ``label`` (IntField), ``sal`` / ``sal2`` (NDArrayField uint8
(nbytes,), layout in ``kernels/bits.py``) and, only where some samples lack a map, ``has_sal``
(IntField 0/1). ``X.beton.json`` records what a reader needs and what the file must be.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .kernels import bits as bitlayout
from .errors import InputError
from .ffcv_import import available as ffcv_available
from .ffcv_write import die_with, ffcv_write
from .files import remove_stale_temps, temp_name
from .reader import INT, NDARRAY, RGB, BetonReader, ReaderError, write_direct

FORMAT = "fastsat-beton"
FORMAT_VERSION = 2  # 2: the manifest's hash is of the content (deterministic); 1: of the file
READ_VERSIONS = (1, 2)
SAL_FIELDS = ("sal", "sal2")
WRITERS = ("auto", "ffcv", "direct")
MAX_PAGE = 1 << 23  # FFCV's pages: a sample never straddles one, so no sample may be larger
STATS_SAMPLES = 2048  # images read in the main process for mean/std (and early shape checks)


class BetonError(InputError):
    """A beton or its manifest is missing, corrupted or does not match."""


@dataclass
class SaliencyMap:
    """A saliency field to write: per-sample packed bits, or None to take them from the samples."""
    granularity: str  # element | pixel
    source: dict  # what produced it: {"method": "bbox"} or teacher, parameters, checkpoint hash
    packed: Optional[np.ndarray] = None  # (N, nbytes) uint8, when computed before the write


def weak_map(method: str) -> SaliencyMap:
    """Eq. 10 signs a layout carries (``bbox`` / ``mask``), one bit per pixel, taken from the samples."""
    return SaliencyMap("pixel", {"method": method, "equation": "Eq. 10"})


def content_id(manifest: dict) -> str:
    """What identifies a beton's data (a resumed run must see the same): its content hash
    (format 2), or its file hash (format 1)."""
    return manifest.get("content_blake2b") or manifest["blake2b"]


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
        self.owner, self.armed = os.getpid(), False

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
        if os.getpid() != self.owner and not self.armed:  # first sample in a forked writer process
            die_with(self.owner)
            self.armed = True
        try:
            return self.sample(i)
        except Exception as e:  # noqa: BLE001 - reported by the parent, see class docstring
            with open(self.errors_file, "a") as f:
                f.write(f"{type(e).__name__}: {e}\n".replace("InputError: ", ""))
            blank = [np.zeros(self.image_shape, np.uint8), 0]
            blank += [np.zeros(bitlayout.num_bytes(self.image_shape, m.granularity), np.uint8) for m in self.maps.values()]
            return tuple(blank + ([0] if self.with_flag else []))


class _Direct:
    """The samples for ``write_direct``: same process, so a bad sample raises at once."""

    def __init__(self, dataset: _Samples):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset.sample(i)


def _page_size(image_shape, maps) -> int:
    """FFCV page: a power of two holding ≥ 64 samples, in [2, 8] MiB (FFCV's minimum is 2 MiB).
    Each writer process leaves at most one page partly empty, so small sets stay small."""
    sample = int(np.prod(image_shape)) + sum(bitlayout.num_bytes(image_shape, m.granularity) for m in maps.values())
    return int(min(MAX_PAGE, max(1 << 21, 1 << int(np.ceil(np.log2(64 * sample))))))


def _stats(samples, n: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] from up to STATS_SAMPLES evenly spaced samples."""
    idx = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLES)).astype(int))
    images = np.stack([samples[int(i)][0] for i in idx]).astype(np.float64) / 255
    return images.mean(axis=(0, 1, 2)).tolist(), np.maximum(images.std(axis=(0, 1, 2)), 1e-3).tolist()


def write_beton(samples, source, out: Path, *, maps: dict[str, SaliencyMap] | None = None,
                overwrite: bool = False, workers: int = -1, chunksize: int = 100, writer: str = "auto",
                progress: bool = False) -> "BetonInfo":
    """Write ``samples`` (see ``writers/common.py``) to ``out`` atomically, with its manifest.
    ``writer``: ``ffcv`` (its parallel DatasetWriter), ``direct`` (``reader.write_direct``, one
    process, no ffcv needed; the same content) or ``auto`` (ffcv where it is installed)."""
    out, maps = Path(out), dict(maps or {})
    writer = _check_request(samples, source, out, maps, overwrite, writer)
    with_flag = getattr(samples, "keep_unmasked", False)
    mean, std = _stats(samples, len(samples))  # reads a few samples here: bad input fails before any write
    fields = _fields(source.image_shape, maps, with_flag)
    remove_stale_temps(out)  # of writes killed earlier
    tmp = temp_name(out)
    errors = tmp.with_name(tmp.name + ".errors")
    try:
        dataset = _Samples(samples, source.image_shape, maps, with_flag, errors)
        try:
            page_size = _page_size(source.image_shape, maps)
            if writer == "direct":
                write_direct(tmp, fields, _Direct(dataset), page_size, progress=progress)
            else:
                ffcv_write(tmp, fields, dataset, page_size, workers, chunksize)
        except OSError as e:
            raise InputError(f"could not write {out}: {e.strerror or e} (full disk?); nothing was written") from None
        if errors.exists():
            lines = errors.read_text().splitlines()
            raise InputError(lines[0] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""))
        manifest = _manifest(source, maps, fields, writer, mean, std, len(samples), tmp.stat().st_size)
        reader = _check_header(tmp, manifest, name_for_errors=out)
        manifest["content_blake2b"] = reader.content_hash()
        _publish(tmp, out, manifest)
    finally:
        for leftover in (tmp, errors, manifest_path(tmp)):
            leftover.unlink(missing_ok=True)
    return BetonInfo(out, manifest, reader.ints("label"))  # validated above, before the rename


def _check_request(samples, source, out: Path, maps: dict, overwrite: bool, writer: str) -> str:
    """Everything about a write that can fail before it starts; the writer ``auto`` resolves to."""
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    n = len(samples)
    if n == 0:
        raise InputError(f"{source.dataset}/{source.split} has no samples")
    for name, m in maps.items():
        if name not in SAL_FIELDS:
            raise ValueError(f"saliency field names are {SAL_FIELDS}, not {name!r}")
        nbytes = bitlayout.num_bytes(source.image_shape, m.granularity)
        if m.packed is not None and m.packed.shape != (n, nbytes):
            raise InputError(f"field {name}: packed bits are {m.packed.shape}, expected ({n}, {nbytes})")
    if writer not in WRITERS:
        raise InputError(f"writer {writer!r}: expected one of {', '.join(WRITERS)}")
    return ("ffcv" if ffcv_available() else "direct") if writer == "auto" else writer


def _fields(image_shape, maps: dict, with_flag: bool) -> dict:
    """Field name → (kind, shape): the image (RGB as FFCV's raw RGB field, else an array), the
    label, one packed-bits array per map, and has_sal where samples may lack a map."""
    fields = {"image": (RGB if image_shape[2] == 3 else NDARRAY, tuple(image_shape)), "label": (INT, ())}
    for name, m in maps.items():
        fields[name] = (NDARRAY, (bitlayout.num_bytes(image_shape, m.granularity),))
    if with_flag:
        fields["has_sal"] = (INT, ())
    return fields


def _manifest(source, maps: dict, fields: dict, writer: str, mean, std, n: int, size: int) -> dict:
    """The manifest of a written beton (its content hash is filled in once the file is checked)."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "dataset": source.dataset, "split": source.split,
        "class_names": list(source.class_names), "num_classes": len(source.class_names),
        "image_shape": list(source.image_shape), "image_write_mode": "raw" if source.image_shape[2] == 3 else "array",
        "num_samples": n, "fields": list(fields), "writer": writer,
        "saliency": {name: {"granularity": m.granularity,
                            "nbytes": bitlayout.num_bytes(source.image_shape, m.granularity),
                            "source": m.source} for name, m in maps.items()},
        "mean": mean, "std": std, "notes": list(source.notes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "file_size": size, "content_blake2b": None,
    }


def _publish(tmp: Path, out: Path, manifest: dict) -> None:
    """The checked temporary beton and its manifest renamed into place."""
    man_tmp = manifest_path(tmp)
    try:
        man_tmp.write_text(json.dumps(manifest, indent=1))
    except OSError as e:
        raise InputError(f"could not write {manifest_path(out)}: {e.strerror or e}; nothing was written") from None
    # the old manifest goes first: a kill between the renames leaves a beton without a manifest
    # (refused on open), never a new beton beside the old manifest
    manifest_path(out).unlink(missing_ok=True)
    os.replace(tmp, out)
    os.replace(man_tmp, manifest_path(out))


@dataclass
class BetonInfo:
    """What loaders need from a validated beton."""
    path: Path
    manifest: dict
    labels: np.ndarray  # (N,) int64, read from the file's header

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


def _check_header(path: Path, manifest: dict, name_for_errors: Path) -> BetonReader:
    """Fields, kinds, shapes, sample count and labels as the file holds them, against the manifest."""
    where = name_for_errors
    try:
        reader = BetonReader(path)
    except ReaderError as e:
        raise BetonError(str(e).replace(str(path), str(where))) from None
    if reader.num_samples != manifest["num_samples"]:
        raise BetonError(f"{where}: {reader.num_samples} samples but the manifest says {manifest['num_samples']}")
    if reader.names != manifest["fields"]:
        raise BetonError(f"{where}: fields {reader.names} but the manifest says {manifest['fields']}")
    rgb = manifest["image_shape"][2] == 3
    expected = {"image": RGB if rgb else NDARRAY, "label": INT, "has_sal": INT}
    for name, kind in reader.kinds.items():
        if kind != expected.get(name, NDARRAY):
            raise BetonError(f"{where}: field {name} has kind {kind}, expected {expected.get(name, NDARRAY)}")
    h, w, c = manifest["image_shape"]
    if rgb:
        heights, widths = reader.image_hw()
        wrong = len(heights) and not ((heights == h) & (widths == w)).all()
    else:
        wrong = reader.shapes["image"] != (h, w, c)
    if wrong:
        raise BetonError(f"{where}: images are not all {h}x{w}x{c} as the manifest says")
    for name, sal in manifest["saliency"].items():
        nbytes = bitlayout.num_bytes(tuple(manifest["image_shape"]), sal["granularity"])
        if reader.shapes.get(name) != (nbytes,):
            raise BetonError(f"{where}: field {name} is {reader.shapes.get(name)}, expected uint8 ({nbytes},)")
    labels = reader.ints("label")
    bad = np.flatnonzero((labels < 0) | (labels >= manifest["num_classes"]))
    if len(bad):
        raise BetonError(f"{where}: sample {bad[0]} has label {labels[bad[0]]}, outside the "
                         f"{manifest['num_classes']} classes ({len(bad)} such samples)")
    return reader


def _is_int(v, lo=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_numbers(v, n: int, positive: bool = False) -> bool:
    return (isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
        for x in v))


def check_manifest(m, mpath: Path) -> None:
    """Every key a reader uses, with its type and shape; a one-line BetonError naming the first
    that is wrong."""
    def bad(what):
        raise BetonError(f"{mpath}: damaged manifest ({what})")
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") not in READ_VERSIONS:
        raise BetonError(f"{mpath}: not a {FORMAT} manifest of version {READ_VERSIONS}")
    shape = m.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        bad(f"image_shape {shape!r} is not [H, W, C]")
    for key in ("file_size", "num_samples"):
        if not _is_int(m.get(key)):
            bad(f"{key} {m.get(key)!r} is not a count")
    if not _is_int(m.get("num_classes"), 1):
        bad(f"num_classes {m.get('num_classes')!r}")
    for key in ("dataset", "split"):
        if not isinstance(m.get(key), str):
            bad(f"{key} is not a string")
    if not (isinstance(m.get("fields"), list) and all(isinstance(f, str) for f in m["fields"])):
        bad("fields is not a list of names")
    if not _is_numbers(m.get("mean"), shape[2]) or not _is_numbers(m.get("std"), shape[2], positive=True):
        bad(f"mean / std must be {shape[2]} finite numbers, std > 0")
    sal = m.get("saliency")
    if not isinstance(sal, dict) or not all(isinstance(v, dict) and v.get("granularity") in bitlayout.GRANULARITIES
                                            for v in sal.values()):
        bad(f"saliency must map fields to a granularity of {bitlayout.GRANULARITIES}")
    if not isinstance(m.get("content_blake2b", m.get("blake2b")), str):
        bad("no content hash")


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BetonError(f"{mpath}: not valid JSON ({e})") from None
    except RecursionError:
        raise BetonError(f"{mpath}: not a fastsat-beton manifest (nested too deep to read)") from None
    check_manifest(manifest, mpath)
    size = path.stat().st_size
    if size != manifest["file_size"]:
        raise BetonError(f"{path}: {size} bytes but the manifest says {manifest['file_size']} (truncated or replaced?)")
    reader = _check_header(path, manifest, path)
    if verify and content_id(manifest) != (reader.content_hash() if "content_blake2b" in manifest else file_hash(path)):
        raise BetonError(f"{path}: content hash differs from the manifest (corrupted)")
    return BetonInfo(path, manifest, reader.ints("label"))
