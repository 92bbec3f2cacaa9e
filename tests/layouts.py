"""Small fixtures in each dataset's official on-disk layout, with the ground truth tests check."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def cifar(root: Path, dataset: str = "cifar10", per_batch: int = 4, rng=None) -> dict:
    """cifar-10-batches-py/ or cifar-100-python/ with random images; returns split → (images HWC, labels)."""
    rng = rng or np.random.default_rng(0)
    if dataset == "cifar10":
        base, batches, meta = root / "cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                                             "test": ["test_batch"]}, ("batches.meta", b"label_names", b"labels", 10)
    else:
        base, batches, meta = root / "cifar-100-python", {"train": ["train"], "test": ["test"]}, ("meta", b"fine_label_names", b"fine_labels", 100)
    base.mkdir(parents=True)
    meta_file, names_key, labels_key, k = meta
    with open(base / meta_file, "wb") as f:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(k)]}, f)
    truth = {}
    for split, names in batches.items():
        images, labels = [], []
        for name in names:
            hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, k, per_batch).tolist()
            rows = hwc.transpose(0, 3, 1, 2).reshape(per_batch, -1)  # the official CHW row layout
            with open(base / name, "wb") as f:
                pickle.dump({b"data": rows, labels_key: y, b"coarse_labels": y}, f)
            images.append(hwc)
            labels += y
        truth[split] = (np.concatenate(images), np.array(labels))
    return truth


def _jpeg(path: Path, arr: np.ndarray) -> np.ndarray:
    """Save as JPEG and return what decoding it gives (the pixels a writer must store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tiny_imagenet(root: Path, wnids=("n01443537", "n01629819"), per_class: int = 3, rng=None) -> dict:
    """tiny-imagenet-200/ with train boxes and val annotations; returns split → list of (file, label, box)."""
    rng = rng or np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {i}, other" for i, w in enumerate(wnids)) + "\n")
    truth = {"train": [], "val": []}
    for label, wnid in enumerate(wnids):
        lines = []
        for k in range(per_class):
            name = f"{wnid}_{k}.JPEG"
            x0, y0 = rng.integers(0, 40, 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(0, 24)), int(y0 + rng.integers(0, 24)))
            pixels = _jpeg(base / "train" / wnid / "images" / name, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            lines.append(f"{name}\t{box[0]}\t{box[1]}\t{box[2]}\t{box[3]}")
            truth["train"].append((pixels, label, box))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    lines = []
    for k in range(4):
        label = k % len(wnids)
        box = (3, 5, 60, 63 - k)
        pixels = _jpeg(base / "val" / "images" / f"val_{k}.JPEG", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        lines.append(f"val_{k}.JPEG\t{wnids[label]}\t{box[0]}\t{box[1]}\t{box[2]}\t{box[3]}")
        truth["val"].append((pixels, label, box))
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return truth


def flowers17(root: Path, ids=(1, 2, 81, 160, 1360), with_mask=(1, 81, 160, 1360), size=(50, 40), rng=None):
    """jpg/image_XXXX.jpg, trimaps/image_XXXX.png (0 background, 128 border, 255 flower), datasplits.mat;
    returns {id: (original pixels, trimap)}. All ids go to trn1; val1/tst1 get the first id."""
    from scipy.io import savemat

    rng = rng or np.random.default_rng(0)
    w, h = size
    truth = {}
    for k in ids:
        pixels = _jpeg(root / "jpg" / f"image_{k:04d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        trimap = None
        if k in with_mask:
            trimap = np.zeros((h, w), np.uint8)
            trimap[10:30, 5:25] = 128
            trimap[12:28, 7:23] = 255
            (root / "trimaps").mkdir(exist_ok=True)
            Image.fromarray(trimap).save(root / "trimaps" / f"image_{k:04d}.png")
        truth[k] = (pixels, trimap)
    savemat(root / "datasplits.mat", {"trn1": np.array(ids), "val1": np.array(ids[:1]), "tst1": np.array(ids[:1]),
                                      "trn2": np.array(ids), "val2": np.array(ids[:1]), "tst2": np.array(ids[:1]),
                                      "trn3": np.array(ids), "val3": np.array(ids[:1]), "tst3": np.array(ids[:1])})
    return truth


def image_folder(root: Path, masks: Path | None = None, side: int = 16, rng=None) -> list:
    """root/<class>/<name>.png (+ masks/<class>/<name>.png); returns [(class, name, pixels, mask)]."""
    rng = rng or np.random.default_rng(0)
    truth = []
    for cls in ("cat", "dog"):
        for name in ("a", "b"):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / cls / f"{name}.png")
            mask = None
            if masks is not None:
                mask = (rng.random((side, side)) < 0.3).astype(np.uint8) * 255
                (masks / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(masks / cls / f"{name}.png")
            truth.append((cls, name, pixels, mask))
    return truth


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def write_idx(root: Path, n_train=40, n_test=20, gz=True, rng=None) -> dict:
    """The four official files with random 28×28 images (a square 'product' on black)."""
    rng = rng or np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 6:22, 6:22] = rng.integers(1, 256, (n, 16, 16))
        images[:, 12:16, 12:16] = 0  # a hole the silhouette fills
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for name, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(0x803, images)),
                           (f"{prefix}-labels-idx1-ubyte", idx_bytes(0x801, labels))):
            (root / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
        truth[split] = (images, labels)
    return truth


EXAMPLES = {  # layout → a tiny copy of its official files under root (each maker returns its non-empty
    # ground truth, so `and` passes on to) write_dataset's layout options for it
    "digits": lambda root: {},  # in scikit-learn's wheel
    "cifar10": lambda root: cifar(root, "cifar10") and {"root": root},
    "cifar100": lambda root: cifar(root, "cifar100") and {"root": root},
    "tiny-imagenet": lambda root: tiny_imagenet(root) and {"root": root},
    "flowers17": lambda root: flowers17(root) and {"root": root, "side": 16},
    "folder": lambda root: image_folder(root / "images", root / "masks") and {"root": root / "images",
                                                                              "mask_root": root / "masks"},
    "fashion-mnist": lambda root: write_idx(root) and {"root": root},
    "mnist": lambda root: write_idx(root) and {"root": root},
}
