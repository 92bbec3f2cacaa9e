"""Bad input fails in one line with a non-zero exit; nothing is overwritten or left half-written."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from fastsat.beton import BetonError, SaliencyMap, open_beton, write_beton
from fastsat.kernels import bits as bitlayout
from fastsat.write_beton import main
from fastsat.writers import Source
from tests import layouts
from tests.ffcv_read import read_all


def run_cli(capsys, *args):
    rc = main(list(args))
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def digits_beton(tmp_path):
    out = tmp_path / "d.beton"
    assert main(["--dataset", "digits", "--split", "test", "--out", str(out), "--workers", "1"]) == 0
    return out


def test_missing_root(tmp_path, capsys):
    rc, err = run_cli(capsys, "--dataset", "cifar10", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and "does not exist" in err and len(err.splitlines()) == 1


def test_wrong_layout_names_the_expected_file(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()
    rc, err = run_cli(capsys, "--dataset", "cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and "batches.meta" in err
    assert not (tmp_path / "x.beton").exists()


@pytest.mark.parametrize("box,word", [("70 1 80 5", "outside"), ("10 10 5 20", "empty")])
def test_bad_boxes(tmp_path, capsys, box, word):
    layouts.tiny_imagenet(tmp_path)
    boxes = tmp_path / "tiny-imagenet-200" / "train" / "n01443537" / "n01443537_boxes.txt"
    lines = boxes.read_text().splitlines()
    lines[1] = lines[1].split("\t")[0] + "\t" + box.replace(" ", "\t")
    boxes.write_text("\n".join(lines) + "\n")
    rc, err = run_cli(capsys, "--dataset", "tiny-imagenet", "--root", str(tmp_path), "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and word in err and "n01443537_1.JPEG" in err


def test_mask_size_mismatch(tmp_path, capsys):
    layouts.image_folder(tmp_path / "imgs", tmp_path / "masks")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "masks" / "dog" / "b.png")
    rc, err = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "imgs"), "--mask-root",
                      str(tmp_path / "masks"), "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and "9x9" in err and "b.png" in err


def test_unreadable_image(tmp_path, capsys):
    layouts.image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "a.png").write_bytes(b"not a png")
    rc, err = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "imgs"), "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and "unreadable image" in err and "a.png" in err


def test_saliency_the_layout_lacks(tmp_path, capsys):
    layouts.cifar(tmp_path, "cifar10")
    rc, err = run_cli(capsys, "--dataset", "cifar10", "--root", str(tmp_path), "--saliency", "bbox",
                      "--out", str(tmp_path / "x.beton"))
    assert rc == 2 and "no 'bbox' saliency" in err


def test_existing_output_is_kept(digits_beton, capsys):
    before = digits_beton.read_bytes()
    rc, err = run_cli(capsys, "--dataset", "digits", "--out", str(digits_beton))
    assert rc == 2 and "--overwrite" in err
    assert digits_beton.read_bytes() == before


class FailsInWorkers:
    """Samples that read fine in the parent (the early checks) but fail in FFCV's writer processes."""

    def __init__(self, n=300):
        self.parent = os.getpid()
        self.n = n
        self.source = Source("synthetic", "train", ["a", "b"], (8, 8, 3), "mask")

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if os.getpid() != self.parent and i == 123:
            raise OSError("disk on fire")
        return np.full((8, 8, 3), i % 256, np.uint8), i % 2, np.ones((8, 8), bool)


def test_worker_failure_is_reported_and_nothing_written(tmp_path):
    samples = FailsInWorkers()
    with pytest.raises(ValueError, match="disk on fire"):
        write_beton(samples, samples.source, tmp_path / "x.beton",
                    maps={"sal": SaliencyMap("pixel", {"method": "mask"})}, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_killed_write_leaves_no_final_file(tmp_path):
    layouts.cifar(tmp_path, "cifar10", per_batch=6000)
    out = tmp_path / "big.beton"
    proc = subprocess.Popen([sys.executable, "-m", "fastsat.write_beton", "--dataset", "cifar10", "--root",
                             str(tmp_path), "--out", str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(p.name.startswith(".big.beton.tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, "writer ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not (tmp_path / "big.beton.json").exists()


def test_element_granularity_from_packed_bits(tmp_path):
    n, shape = 50, (8, 8, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    positive = rng.random((n, *shape)) < 0.5
    packed = bitlayout.pack_np(positive)
    samples = [(images[i], i % 3, None) for i in range(n)]
    source = Source("synthetic", "train", ["a", "b", "c"], shape)
    info = write_beton(samples, source, tmp_path / "e.beton", workers=1,
                       maps={"sal": SaliencyMap("element", {"method": "test"}, packed)})
    assert info.granularity("sal") == "element"
    got = read_all(tmp_path / "e.beton")
    assert got["sal"].shape == (n, (8 * 8 * 3 + 7) // 8)
    assert np.array_equal(bitlayout.unpack_np(got["sal"], 8 * 8 * 3).reshape(n, *shape), positive)
    assert np.array_equal(got["image"], images)


def test_open_checks_size_header_fields_and_hash(digits_beton):
    info = open_beton(digits_beton, verify=True)
    assert info.num_samples == 360 and info.image_shape == (32, 32, 3) and info.granularity("sal") == "pixel"
    with pytest.raises(BetonError, match="no saliency field 'sal2'"):
        info.granularity("sal2")
    data = bytearray(digits_beton.read_bytes())
    # a flipped byte in the data region: cheap checks pass, --verify catches it
    data[len(data) // 2] ^= 0xFF
    digits_beton.write_bytes(bytes(data))
    open_beton(digits_beton)
    with pytest.raises(BetonError, match="content hash"):
        open_beton(digits_beton, verify=True)
    # truncated
    digits_beton.write_bytes(bytes(data[:-100]))
    with pytest.raises(BetonError, match="truncated"):
        open_beton(digits_beton)


def test_open_checks_manifest(digits_beton):
    mpath = digits_beton.with_name(digits_beton.name + ".json")
    good = json.loads(mpath.read_text())
    for key, value, word in [("num_samples", 361, "samples"), ("fields", ["image", "label"], "fields"),
                             ("format_version", 99, "manifest")]:
        mpath.write_text(json.dumps({**good, key: value}))
        with pytest.raises(BetonError, match=word):
            open_beton(digits_beton)
    mpath.write_text(json.dumps({**good, "image_shape": [16, 16, 3]}))
    with pytest.raises(BetonError, match="not all 16x16"):
        open_beton(digits_beton)
    mpath.write_text(json.dumps({**good, "saliency": {"sal": {**good["saliency"]["sal"], "granularity": "element"}}}))
    with pytest.raises(BetonError, match="field sal"):
        open_beton(digits_beton)
    mpath.unlink()
    with pytest.raises(BetonError, match="manifest .* is missing"):
        open_beton(digits_beton)


def test_garbage_header(digits_beton):
    data = bytearray(digits_beton.read_bytes())
    data[:64] = bytes(64)
    digits_beton.write_bytes(bytes(data))
    with pytest.raises(BetonError):
        open_beton(digits_beton)
