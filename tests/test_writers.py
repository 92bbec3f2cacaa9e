"""Each writer → a beton that a stock FFCV Loader reads back exactly, signs = Eq. 10 from the fixture."""
import numpy as np
import pytest
from PIL import Image

from fastsat.kernels import bits as bitlayout
from fastsat.write_beton import main, write_dataset
from fastsat.writers import LAYOUTS
from tests import layouts
from tests.ffcv_read import manifest, read_all


def box_mask(h, w, box):
    x0, y0, x1, y1 = box
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def signs_of(sal, h, w):
    return bitlayout.unpack_np(sal, h * w).reshape(-1, h, w)


def write(tmp_path, *args):
    out = tmp_path / "out.beton"
    assert main([*args, "--out", str(out), "--workers", "2"]) == 0
    return out


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar(tmp_path, dataset, split):
    truth = layouts.cifar(tmp_path / "data", dataset)
    out = write(tmp_path, "--dataset", dataset, "--root", str(tmp_path / "data"), "--split", split)
    got = read_all(out)
    images, labels = truth[split]
    assert np.array_equal(got["image"], images)
    assert np.array_equal(got["label"].ravel(), labels)
    assert "sal" not in got
    m = manifest(out)
    assert m["num_classes"] == (10 if dataset == "cifar10" else 100)
    assert m["class_names"][3] == "class3"


@pytest.mark.parametrize("split", ["train", "val"])
def test_tiny_imagenet_boxes(tmp_path, split):
    truth = layouts.tiny_imagenet(tmp_path)
    out = write(tmp_path, "--dataset", "tiny-imagenet", "--root", str(tmp_path), "--split", split)
    got = read_all(out)
    rows = truth[split]
    assert np.array_equal(got["image"], np.stack([r[0] for r in rows]))
    assert got["label"].ravel().tolist() == [r[1] for r in rows]
    assert got["sal"].shape == (len(rows), 64 * 64 // 8)  # ⌈n/8⌉ bytes: per-pixel granularity
    expected = np.stack([box_mask(64, 64, r[2]) for r in rows])
    assert np.array_equal(signs_of(got["sal"], 64, 64), expected)
    m = manifest(out)
    assert m["saliency"]["sal"]["granularity"] == "pixel" and m["saliency"]["sal"]["source"]["method"] == "bbox"
    assert m["class_names"] == ["thing 0", "thing 1"]


def test_flowers17_masks_resized_and_missing_skipped(tmp_path):
    truth = layouts.flowers17(tmp_path)
    out = write(tmp_path, "--dataset", "flowers17", "--root", str(tmp_path), "--side", "24")
    got = read_all(out)
    ids = [k for k in sorted(truth) if truth[k][1] is not None]  # image 2 has no trimap: skipped
    assert got["label"].ravel().tolist() == [(k - 1) // 80 for k in ids]
    for i, k in enumerate(ids):
        pixels, trimap = truth[k]
        expected_img = np.asarray(Image.fromarray(pixels).resize((24, 24), Image.BILINEAR))
        assert np.array_equal(got["image"][i], expected_img)
        expected = np.asarray(Image.fromarray(trimap).resize((24, 24), Image.NEAREST)) >= 128
        assert np.array_equal(signs_of(got["sal"][i:i + 1], 24, 24)[0], expected)
    assert "1 images without a trimap skipped" in manifest(out)["notes"][0]


def test_flowers17_keep_unmasked(tmp_path):
    truth = layouts.flowers17(tmp_path)
    out = write(tmp_path, "--dataset", "flowers17", "--root", str(tmp_path), "--side", "16", "--missing-mask", "keep")
    got = read_all(out)
    has = got["has_sal"].ravel().tolist()
    assert has == [int(truth[k][1] is not None) for k in sorted(truth)]
    assert not got["sal"][has.index(0)].any()


def test_image_folder_with_masks(tmp_path):
    truth = layouts.image_folder(tmp_path / "imgs", tmp_path / "masks")
    out = write(tmp_path, "--dataset", "folder", "--root", str(tmp_path / "imgs"), "--mask-root",
                str(tmp_path / "masks"), "--side", "16")
    got = read_all(out)
    assert np.array_equal(got["image"], np.stack([t[2] for t in truth]))
    assert got["label"].ravel().tolist() == [0, 0, 1, 1]
    assert np.array_equal(signs_of(got["sal"], 16, 16), np.stack([t[3] > 0 for t in truth]))
    assert manifest(out)["class_names"] == ["cat", "dog"]


def test_digits_embedded_default(tmp_path):
    from sklearn.datasets import load_digits

    out = write(tmp_path, "--dataset", "digits", "--split", "test")
    got = read_all(out)
    n = len(load_digits().target)
    assert len(got["label"]) == n - int(n * 0.8)  # 20% stratified test split
    counts = np.bincount(got["label"].ravel(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class
    assert np.array_equal(got["image"][..., 0], got["image"][..., 2])  # grey repeated to RGB
    positive = signs_of(got["sal"], 32, 32)
    # the ink mask: foreground where the upsampled ink u > 1/4, stored byte v = round(255·u)
    v = got["image"][..., 0]
    assert not (positive & (v < 64)).any() and positive[v >= 65].all()
    assert 0.1 < positive.mean() < 0.6


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_registered_layout_writes_each_of_its_splits(tmp_path, name):
    """From the registry: a new layout is tested once tests/layouts.py has a tiny copy of its files."""
    layout = LAYOUTS.get(name)
    assert name in layouts.EXAMPLES, f"add a tiny example of {name}'s official files to tests/layouts.EXAMPLES"
    options = layouts.EXAMPLES[name](tmp_path)
    for split in layout.splits:
        info = write_dataset(name, split, tmp_path / f"{split}.beton", writer="direct", workers=1, progress=False,
                             **options)
        m = info.manifest
        assert m["dataset"] == name and m["num_samples"] == len(info.labels) > 0
        assert 0 <= info.labels.min() and info.labels.max() < m["num_classes"]
        assert tuple(m["image_shape"])[2] in (1, 3)
        weak = m["saliency"].get("sal", {}).get("source", {}).get("method")
        assert weak == (layout.weak[0] if layout.weak else None), (split, m["saliency"])

