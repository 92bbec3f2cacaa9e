"""CIFAR-10 / CIFAR-100 from the official python pickles (``cifar-10-batches-py/``,
``cifar-100-python/``; CIFAR-100 uses the fine labels). No boxes: saliency comes from teachers."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .common import InputError, Source, register_layout, require

LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "batches.meta", "label_names", b"labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta", "fine_label_names",
                 b"fine_labels"),
}


class _DataOnly(pickle.Unpickler):
    """Admits what CIFAR's pickles hold (dicts, lists, byte strings, numpy arrays) and nothing that
    could run code: any other global a file names is refused before it is looked up."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for f in ("_reconstruct", "scalar")),
               *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never holds; refused, "
                                         f"nothing of it ran")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _DataOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise InputError(f"not a CIFAR file {path}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"not a CIFAR file {path}: it holds a {type(data).__name__}, not a dict")
    return data


class Cifar:
    def __init__(self, root: Path, split: str = "train", dataset: str = "cifar10"):
        folder, splits, meta_name, names_key, labels_key = LAYOUTS[dataset]
        base = Path(root)
        if base.name != folder:
            base = base / folder
        require(base, f"{dataset} folder")
        meta = _unpickle(require(base / meta_name, f"{dataset} metadata"))
        names = [n.decode() if isinstance(n, bytes) else n for n in meta[names_key.encode()]]
        images, labels = [], []
        for name in splits[split]:
            batch = _unpickle(require(base / name, f"{dataset} batch"))
            if b"data" not in batch or labels_key not in batch:
                raise InputError(f"{base / name} lacks 'data' or '{labels_key.decode()}'")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise InputError(f"{base / name}: 'data' should be (N, 3072) uint8, got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW rows → HWC
            labels.append(np.asarray(batch[labels_key], dtype=np.int64))
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)
        if len(self.images) != len(self.labels):
            raise InputError(f"{base}: {len(self.images)} images but {len(self.labels)} labels")
        self.source = Source(dataset, split, names, (32, 32, 3), "none")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), None


@register_layout("cifar10", splits=("train", "test"), options={"root": None}, description="CIFAR-10 python pickles (cifar-10-batches-py/)")
def cifar10(split: str, root: Path) -> Cifar:
    return Cifar(root, split, "cifar10")


@register_layout("cifar100", splits=("train", "test"), options={"root": None},
                 description="CIFAR-100 python pickles (cifar-100-python/, fine labels)")
def cifar100(split: str, root: Path) -> Cifar:
    return Cifar(root, split, "cifar100")
