"""fastsat's own betons read directly, memory-mapped with numpy: no ffcv needed.

The file layout is the one ffcv 1.0.2's ``DatasetWriter`` defines (``ffcv/types.py``,
``ffcv/reader.py``, ``ffcv/fields/*.py``), little-endian:

    header          version u2 (= 2), num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8 (aligned)
    field desc × F  type_id u1, name u1[16] (NUL-padded), arguments u1[1024] (aligned)
    metadata × N    one aligned struct per sample, a member per field:
                      IntField (1)      value i8
                      RGBImageField (2) mode u1 (0 jpeg, 1 raw), width u2, height u2, data_ptr u8 (packed)
                      NDArrayField (4)  data_ptr u8; its arguments hold shape u8[32], type_length u8, dtype JSON
    data pages      each sample's bytes at its data_ptr

The reader accepts exactly what ``write_beton`` writes (raw images, int fields, fixed-size uint8
arrays) and refuses anything else in one line. Tests compare it byte for byte with ffcv's Loader.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import InputError

VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
NDARRAY_ARGS = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])
INT, RGB, NDARRAY = 1, 2, 4
META = {INT: np.dtype("<i8"), NDARRAY: np.dtype("<u8"),
        RGB: np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])}
RAW = 1
CHUNK = 1 << 22  # bytes gathered per numpy fancy-index call (bounds the index array's memory)


class ReaderError(InputError):
    """A file this reader does not fully understand, or a damaged one."""


class BetonReader:
    """Fields of a beton by name: ints (``labels``), raw images and fixed-size arrays, gathered for
    any index set straight from a read-only memory map."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            header = self.mm[:HEADER.itemsize].view(HEADER)[0]
        except (OSError, ValueError) as e:
            raise ReaderError(f"{path}: not a readable beton ({e})") from None
        if header["version"] != VERSION:
            raise ReaderError(f"{path}: beton format version {header['version']}, this reader knows {VERSION}")
        self.num_samples, nfields = int(header["num_samples"]), int(header["num_fields"])
        end = HEADER.itemsize + nfields * FIELD_DESC.itemsize
        descs = self.mm[HEADER.itemsize:end].view(FIELD_DESC)
        self.names = [bytes(d["name"]).split(b"\0")[0].decode("ascii") for d in descs]
        self.kinds = {n: int(d["type_id"]) for n, d in zip(self.names, descs)}
        unknown = [n for n, k in self.kinds.items() if k not in META]
        if unknown:
            raise ReaderError(f"{path}: field(s) {unknown} of a kind this reader does not read")
        self.shapes = {n: self._ndarray_shape(d) for n, d in zip(self.names, descs) if self.kinds[n] == NDARRAY}
        meta_type = np.dtype([(n, META[self.kinds[n]]) for n in self.names], align=True)
        stop = end + self.num_samples * meta_type.itemsize
        if stop > len(self.mm):
            raise ReaderError(f"{path}: truncated (metadata runs past the end of the file)")
        self.metadata = self.mm[end:stop].view(meta_type)
        self._check_data()

    def _ndarray_shape(self, desc) -> tuple[int, ...]:
        args = desc["arguments"]
        head = args[:NDARRAY_ARGS.itemsize].view(NDARRAY_ARGS)[0]
        descr = json.loads(bytes(args[NDARRAY_ARGS.itemsize:][:int(head["type_length"])]).decode("ascii"))
        if np.dtype([tuple(x) for x in descr])["f0"] != np.uint8:
            raise ReaderError(f"{self.path}: array fields must be uint8")
        shape = [int(s) for s in head["shape"]]
        while shape and shape[-1] == 0:
            shape.pop()
        return tuple(shape)

    def _check_data(self) -> None:
        for name in self.names:
            size = self.nbytes(name)
            if size is None:
                continue
            ptr = self._ptrs(name)
            if len(ptr) and int(ptr.max()) + size > len(self.mm):
                raise ReaderError(f"{self.path}: truncated (field {name} points past the end of the file)")
            if self.kinds[name] == RGB and len(ptr) and not (self.metadata[name]["mode"] == RAW).all():
                raise ReaderError(f"{self.path}: JPEG images; this reader reads raw images only")

    def image_hw(self, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Per-sample heights and widths of an RGB image field."""
        m = self.metadata[name]
        return np.asarray(m["height"]), np.asarray(m["width"])

    def nbytes(self, name: str) -> int | None:
        """Bytes per sample of a field stored in the data pages (None: stored in the metadata)."""
        if self.kinds[name] == NDARRAY:
            return int(np.prod(self.shapes[name]))
        if self.kinds[name] == RGB:
            if not self.num_samples:
                return 0
            h, w = self.image_hw(name)
            if (h != h[0]).any() or (w != w[0]).any():
                raise ReaderError(f"{self.path}: images of several sizes; this reader needs one size")
            return int(h[0]) * int(w[0]) * 3
        return None

    def _ptrs(self, name: str) -> np.ndarray:
        m = self.metadata[name]
        return np.asarray(m["data_ptr"] if self.kinds[name] == RGB else m, dtype=np.int64)

    def ints(self, name: str) -> np.ndarray:
        if self.kinds[name] != INT:
            raise ReaderError(f"{self.path}: field {name} is not an int field")
        return np.asarray(self.metadata[name], dtype=np.int64)

    def read(self, name: str, indices=None) -> np.ndarray:
        """A field for ``indices`` (default: all) in that order: ints (N,), images (N, H, W, 3)
        uint8, arrays (N, *shape) uint8."""
        indices = np.arange(self.num_samples) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.kinds[name] == INT:
            return self.ints(name)[indices]
        size, ptrs = self.nbytes(name), self._ptrs(name)[indices]
        out = np.empty((len(indices), size), dtype=np.uint8)
        offsets, step = np.arange(size, dtype=np.int64), max(1, CHUNK // max(size, 1))
        for start in range(0, len(indices), step):
            out[start:start + step] = self.mm[ptrs[start:start + step, None] + offsets]
        if self.kinds[name] == RGB:
            h, w = self.image_hw(name)
            return out.reshape(len(indices), int(h[0]) if len(h) else 0, int(w[0]) if len(w) else 0, 3)
        return out.reshape(len(indices), *self.shapes[name])

    def content_hash(self) -> str:
        """blake2b of every field's content in sample order: the same data gives the same hash,
        however the writer's processes laid the pages out."""
        h = hashlib.blake2b(digest_size=32)
        for name in self.names:
            h.update(f"{name}:{self.kinds[name]};".encode())
            step = max(1, CHUNK // max(self.nbytes(name) or 8, 1))
            for start in range(0, self.num_samples, step):
                idx = np.arange(start, min(start + step, self.num_samples))
                h.update(np.ascontiguousarray(self.read(name, idx)).tobytes())
        return h.hexdigest()
