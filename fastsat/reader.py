"""fastsat's own betons read (memory-mapped with numpy) and written directly: no ffcv needed.

The file layout is the one ffcv 1.0.2's ``DatasetWriter`` defines (``ffcv/types.py``,
``ffcv/reader.py``, ``ffcv/fields/*.py``), little-endian:

    header          version u2 (= 2), num_fields u2, page_size u4, num_samples u8, alloc_table_ptr u8 (aligned)
    field desc × F  type_id u1, name u1[16] (NUL-padded), arguments u1[1024] (aligned)
    metadata × N    one aligned struct per sample, a member per field:
                      IntField (1)      value i8
                      RGBImageField (2) mode u1 (0 jpeg, 1 raw), width u2, height u2, data_ptr u8 (packed)
                      NDArrayField (4)  data_ptr u8; its arguments hold shape u8[32], type_length u8, dtype JSON
    data pages      each sample's bytes at its data_ptr

    allocation table (sample_id u8, ptr u8, size u8) per allocation, at alloc_table_ptr (file end)

Data pages start at the first page boundary after the metadata; one sample's allocations never
cross a page (ffcv's page-wise loaders rely on that). The reader accepts exactly what
``write_beton`` writes (raw images, int fields, fixed-size uint8 arrays) and refuses anything else
in one line; ``write_direct`` writes the same layout in one process, for machines without ffcv.
Tests compare both byte for byte with ffcv's Loader and DatasetWriter.
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
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
INT, RGB, NDARRAY = 1, 2, 4
META = {INT: np.dtype("<i8"), NDARRAY: np.dtype("<u8"),
        RGB: np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])}
RAW = 1
MAX_FIELDS = 64  # far above any beton fastsat writes; a larger count is a damaged header
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
        if not 1 <= nfields <= MAX_FIELDS or end > len(self.mm):
            raise ReaderError(f"{path}: damaged header ({nfields} fields)")
        descs = self.mm[HEADER.itemsize:end].view(FIELD_DESC)
        raw_names = [bytes(d["name"]) for d in descs]
        self.names = [b.split(b"\0")[0].decode("ascii", "replace") for b in raw_names]
        if any(not b.isascii() or b.rstrip(b"\0").count(b"\0") for b in raw_names):  # ffcv decodes all 16 bytes
            raise ReaderError(f"{path}: damaged field table (a field name is not NUL-padded ASCII)")
        if len(set(self.names)) != len(self.names) or not all(self.names):
            raise ReaderError(f"{path}: damaged field table (empty or repeated field names {self.names})")
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
        self._check_allocations(int(header["page_size"]), int(header["alloc_table_ptr"]), stop)

    def _ndarray_shape(self, desc) -> tuple[int, ...]:
        args = desc["arguments"]
        head = args[:NDARRAY_ARGS.itemsize].view(NDARRAY_ARGS)[0]
        length = int(head["type_length"])
        try:
            if length > len(args) - NDARRAY_ARGS.itemsize:
                raise ValueError(length)
            descr = json.loads(bytes(args[NDARRAY_ARGS.itemsize:][:length]).decode("ascii"))
            dtype = np.dtype([tuple(x) for x in descr])["f0"]
        except (ValueError, TypeError, IndexError, UnicodeDecodeError):
            raise ReaderError(f"{self.path}: damaged field table (an array field's dtype)") from None
        if dtype != np.uint8:
            raise ReaderError(f"{self.path}: array fields must be uint8")
        shape = [int(s) for s in head["shape"]]
        while shape and shape[-1] == 0:
            shape.pop()
        if not shape or 0 in shape or np.prod(shape, dtype=object) > len(self.mm):
            raise ReaderError(f"{self.path}: damaged field table (array shape {shape})")
        return tuple(shape)

    def _check_data(self) -> None:
        for name in self.names:
            size = self.nbytes(name)
            if size is None:
                continue
            if self.kinds[name] == RGB and self.num_samples and not (self.metadata[name]["mode"] == RAW).all():
                raise ReaderError(f"{self.path}: JPEG images; this reader reads raw images only")
            ptr = self._ptrs(name)
            if len(ptr) and (int(ptr.min()) < 0 or int(ptr.max()) + size > len(self.mm)):
                raise ReaderError(f"{self.path}: truncated or damaged (field {name} points outside the file)")

    def _check_allocations(self, page_size: int, table_ptr: int, data_start: int) -> None:
        """The allocation table ffcv's loaders index without bounds checks: inside the file, every
        allocation in the data pages of one page, none overlapping, each sample's data pointer
        an allocation of that sample of the field's size."""
        where = f"{self.path}: damaged allocation table"
        if page_size <= 0 or page_size & (page_size - 1):
            raise ReaderError(f"{self.path}: damaged header (page size {page_size} is not a power of two)")
        if not data_start <= table_ptr <= len(self.mm) or (len(self.mm) - table_ptr) % ALLOC.itemsize:
            raise ReaderError(f"{where} (at {table_ptr} in a file of {len(self.mm)} bytes)")
        table = self.mm[table_ptr:].view(ALLOC)
        if (table["ptr"] >= table_ptr).any() or (table["size"] > table_ptr).any():
            raise ReaderError(f"{where} (an allocation outside the data pages)")
        ids, ptrs, sizes = (np.asarray(table[k], dtype=np.int64) for k in ("sample_id", "ptr", "size"))
        order = np.argsort(ptrs, kind="stable")
        ids, ptrs, sizes = ids[order], ptrs[order], sizes[order]
        last = ptrs + np.maximum(sizes, 1) - 1
        if ((table["sample_id"] >= self.num_samples).any() or (ptrs < data_start).any()
                or (ptrs + sizes > table_ptr).any() or (ptrs // page_size != last // page_size).any()
                or (ptrs[1:] < ptrs[:-1] + sizes[:-1]).any()):
            raise ReaderError(f"{where} (allocations out of range, across pages or overlapping)")
        for name in self.names:
            size = self.nbytes(name)
            if not size:
                continue
            want = self._ptrs(name)
            at = np.minimum(np.searchsorted(ptrs, want), max(len(ptrs) - 1, 0))
            if len(want) and (not len(ptrs) or (ptrs[at] != want).any() or (sizes[at] != size).any()
                              or (ids[at] != np.arange(self.num_samples)).any()):
                raise ReaderError(f"{where} (field {name}'s data is not where the table says)")

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


def _field_descriptors(fields: dict[str, tuple[int, tuple]]) -> np.ndarray:
    """FFCV's field table: type, name (16 bytes) and, for arrays, dtype and shape."""
    descs = np.zeros(len(fields), FIELD_DESC)
    for d, (name, (kind, shape)) in zip(descs, fields.items()):
        d["type_id"] = kind
        d["name"][:len(name)] = np.frombuffer(name.encode("ascii")[:16], np.uint8)
        if kind == NDARRAY:
            d["arguments"][:] = _ndarray_args(shape)
    return descs


def write_direct(path: Path, fields: dict[str, tuple[int, tuple]], samples, page_size: int,
                 progress: bool = False) -> None:
    """``samples`` (indexable; sample i is a tuple of values in ``fields`` order) written to ``path``
    in ffcv's layout, in this process. ``fields``: name → (INT, ()) | (RGB, (H, W, 3)) | (NDARRAY,
    shape), values int / uint8 arrays of that shape. The inverse of ``BetonReader``."""
    from tqdm import tqdm

    names, n = list(fields), len(samples)
    meta = np.zeros(n, np.dtype([(name, META[fields[name][0]]) for name in names], align=True))
    descs = _field_descriptors(fields)
    sizes = {name: int(np.prod(shape)) for name, (kind, shape) in fields.items() if kind != INT}
    per_sample = sum(sizes.values())
    if per_sample > page_size:
        raise ValueError(f"a sample ({per_sample} B) does not fit a page of {page_size} B")
    start = HEADER.itemsize + descs.nbytes + meta.nbytes
    first_page = -(-start // page_size) * page_size
    page, page_no, used, allocs = np.zeros(page_size, np.uint8), 0, 0, []
    with open(path, "wb") as f:
        f.truncate(first_page)  # header, descriptors and metadata are written last
        f.seek(first_page)
        for i in tqdm(range(n), desc=f"writing {Path(path).name}", disable=not progress, leave=False):
            if used + per_sample > page_size:
                f.write(page.tobytes())
                page[:], page_no, used = 0, page_no + 1, 0
            for name, value in zip(names, samples[i]):
                kind = fields[name][0]
                if kind == INT:
                    meta[name][i] = value
                    continue
                ptr = first_page + page_no * page_size + used
                page[used:used + sizes[name]] = np.ascontiguousarray(value, dtype=np.uint8).reshape(-1)
                used += sizes[name]
                allocs.append((i, ptr, sizes[name]))
                if kind == RGB:
                    h, w = fields[name][1][:2]
                    meta[name][i] = (RAW, w, h, ptr)
                else:
                    meta[name][i] = ptr
        if used:
            f.write(page.tobytes())  # whole pages, as ffcv writes them
        header = np.zeros(1, HEADER)
        header[0] = (VERSION, len(names), page_size, n, f.tell())
        f.write(np.array(allocs, ALLOC).tobytes())
        f.seek(0)
        f.write(header.tobytes() + descs.tobytes() + meta.tobytes())


def _ndarray_args(shape: tuple) -> np.ndarray:
    """NDArrayField's arguments for a uint8 array of ``shape``: shape, dtype JSON length, dtype JSON."""
    head = np.zeros(1, NDARRAY_ARGS)
    head["shape"][0][:len(shape)] = shape
    descr = json.dumps(np.dtype("uint8").descr).encode("ascii")
    head["type_length"] = len(descr)
    out = np.zeros(1024, np.uint8)
    blob = np.concatenate([head.view(np.uint8), np.frombuffer(descr, np.uint8)])
    out[:len(blob)] = blob
    return out
