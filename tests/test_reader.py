"""fastsat's own beton reader against ffcv's Loader, byte for byte, and its refusals."""
import json

import numpy as np
import pytest

from fastsat.beton import SaliencyMap, write_beton
from fastsat.reader import BetonReader, ReaderError
from fastsat.write_beton import main as write_main
from fastsat.writers import Source
from tests import layouts
from tests.ffcv_read import read_all


class Arrays:
    """Samples from arrays (images, labels, masks); ``keep_unmasked`` writes a has_sal field."""

    def __init__(self, n, side, rng, flagged=False):
        self.images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 5, n)
        self.masks = rng.random((n, side, side)) < 0.5
        self.keep_unmasked = flagged
        self.source = Source("arrays", "train", [str(i) for i in range(5)], (side, side, 3), "mask")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), self.masks[i], int(i % 3 != 0)


def betons(tmp_path):
    rng = np.random.default_rng(0)
    one = Arrays(300, 8, rng)
    write_beton(one, one.source, tmp_path / "one.beton", maps={"sal": SaliencyMap("pixel", {"method": "mask"})})
    two = Arrays(257, 16, rng, flagged=True)
    packed = rng.integers(0, 256, (257, 16 * 16 * 3 // 8), dtype=np.uint8)
    write_beton(two, two.source, tmp_path / "two.beton",
                maps={"sal": SaliencyMap("element", {"method": "x"}, packed),
                      "sal2": SaliencyMap("element", {"method": "y"}, packed[::-1].copy())})
    layouts.cifar(tmp_path, "cifar10", per_batch=7)
    assert write_main(["--dataset", "cifar10", "--root", str(tmp_path), "--split", "train", "--out",
                       str(tmp_path / "plain.beton")]) == 0
    return ["one.beton", "two.beton", "plain.beton"]


def test_reader_equals_ffcv_loader(tmp_path):
    for name in betons(tmp_path):
        path = tmp_path / name
        expected = read_all(path)
        reader = BetonReader(path)
        assert reader.names == list(expected)
        for field, values in expected.items():
            got = reader.read(field)
            assert np.array_equal(got.reshape(values.shape), values), (name, field)
        idx = np.array([5, 0, 3, 3])
        assert np.array_equal(reader.read("image", idx), expected["image"][idx])


def test_loaders_mix_two_maps_per_sample(tmp_path):
    """With two map fields the loaders yield one map per sample, the same through FFCV and the
    resident reader: each row is its sample's sal or sal2, about half each (rows without a map,
    has_sal = 0, get random bits instead, as with one map)."""
    import torch

    from fastsat.beton import open_beton
    from fastsat.data import make_batches

    betons(tmp_path)
    info = open_beton(tmp_path / "two.beton")
    stored = {f: BetonReader(info.path).read(f) for f in ("sal", "sal2", "has_sal")}
    kw = dict(batch_size=16, workers=1, device=torch.device("cpu"), train=True, seed=5)
    streamed = make_batches(info, ["sal", "sal2"], **kw).epoch(1)  # FFCV reuses its buffers: compare as they come
    resident = make_batches(info, ["sal", "sal2"], resident=True, **kw).epoch(1)
    first = total = 0
    for a, b in zip(streamed, resident):
        assert torch.equal(a.x, b.x) and torch.equal(a.bits, b.bits) and a.granularity == "element"
        idx = b.indices.numpy()
        assert np.array_equal(b.y.numpy(), info.labels[idx])
        keep = stored["has_sal"].reshape(-1)[idx] == 1
        bits = b.bits.numpy()[keep]
        is_first = (bits == stored["sal"][idx][keep]).all(1)
        assert (is_first | (bits == stored["sal2"][idx][keep]).all(1)).all()
        first, total = first + is_first.sum(), total + keep.sum()
    assert abs(first / total - 0.5) < 4 * np.sqrt(0.25 / total), (first, total)


def test_content_hash_ignores_page_layout(tmp_path):
    rng = np.random.default_rng(1)
    samples = Arrays(400, 8, rng)
    hashes = set()
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.beton"
        write_beton(samples, samples.source, out, maps={"sal": SaliencyMap("pixel", {"method": "mask"})},
                    workers=workers)
        hashes.add(json.loads(out.with_name(out.name + ".json").read_text())["content_blake2b"])
    assert len(hashes) == 1


class Gray(Arrays):
    """(28, 28, 1) images: an NDArrayField image; 3,000 samples span two 2 MiB pages."""

    def __init__(self, n, rng):
        super().__init__(n, 28, rng)
        self.images = self.images[..., :1].copy()
        self.source = Source("arrays", "train", [str(i) for i in range(5)], (28, 28, 1), "mask")


def test_direct_writer_equals_ffcv_writer(tmp_path):
    """Written in one process without ffcv, read by ffcv's own Reader and Loader: the same bytes as
    ffcv's DatasetWriter gives, the same content hash; one sample never straddles a page."""
    from ffcv.reader import Reader

    rng = np.random.default_rng(2)
    cases = {"rgb": (Arrays(300, 8, rng), {"sal": SaliencyMap("pixel", {"method": "mask"})}),
             "flag": (Arrays(130, 16, rng, flagged=True), {"sal": SaliencyMap("pixel", {"method": "mask"}),
                                                           "sal2": SaliencyMap("element", {"method": "y"},
                                                                               rng.integers(0, 256, (130, 96), dtype=np.uint8))}),
             "gray": (Gray(3000, rng), {"sal": SaliencyMap("pixel", {"method": "mask"})})}
    for name, (samples, maps) in cases.items():
        infos = {w: write_beton(samples, samples.source, tmp_path / f"{name}_{w}.beton", maps=maps, writer=w, workers=2)
                 for w in ("ffcv", "direct")}
        assert infos["direct"].manifest["writer"] == "direct"
        assert infos["direct"].manifest["content_blake2b"] == infos["ffcv"].manifest["content_blake2b"]
        ours, theirs = (read_all(info.path) for info in (infos["direct"], infos["ffcv"]))
        assert list(ours) == list(theirs)
        for field in theirs:
            assert np.array_equal(ours[field], theirs[field]), (name, field)
        table = Reader(str(infos["direct"].path)).alloc_table
        page = BetonReader(infos["direct"].path).mm[:24].view(np.uint32)[1]
        assert (table["ptr"] // page == (table["ptr"] + table["size"] - 1) // page).all()
        if name == "gray":
            assert len(np.unique(table["ptr"] // page)) == 2


def test_write_beton_without_ffcv(tmp_path):
    """With ffcv not importable, write_beton --writer auto writes directly and the reader reads it."""
    import subprocess
    import sys

    layouts.cifar(tmp_path, "cifar10", per_batch=7)
    code = ("import sys; sys.modules['ffcv'] = None; from fastsat.write_beton import main; "
            f"sys.exit(main(['--dataset', 'cifar10', '--root', {str(tmp_path)!r}, '--split', 'train', "
            f"'--out', {str(tmp_path / 'direct.beton')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert write_main(["--dataset", "cifar10", "--root", str(tmp_path), "--split", "train", "--writer", "ffcv",
                       "--out", str(tmp_path / "ffcv.beton")]) == 0
    man = {w: json.loads((tmp_path / f"{w}.beton.json").read_text()) for w in ("direct", "ffcv")}
    assert man["direct"]["writer"] == "direct" and man["ffcv"]["writer"] == "ffcv"
    assert man["direct"]["content_blake2b"] == man["ffcv"]["content_blake2b"]


def test_reader_refuses_what_it_does_not_know(tmp_path):
    from ffcv.fields import FloatField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Jpegs:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (np.full((8, 8, 3), 9 * i, np.uint8),)

    path = tmp_path / "jpeg.beton"
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="jpg")}, num_workers=1).from_indexed_dataset(Jpegs())
    with pytest.raises(ReaderError, match="JPEG"):
        BetonReader(path)

    class Floats:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (float(i),)

    path = tmp_path / "float.beton"
    DatasetWriter(str(path), {"value": FloatField()}, num_workers=1).from_indexed_dataset(Floats())
    with pytest.raises(ReaderError, match="does not read"):
        BetonReader(path)
    (tmp_path / "junk.beton").write_bytes(b"\x02\x00" + bytes(10))
    with pytest.raises(ReaderError):
        BetonReader(tmp_path / "junk.beton")
