"""Teacher saliency: each method against an independent computation, and into the beton."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from fastsat import saliency, saliency_grid
from fastsat.beton import open_beton
from fastsat.kernels import bits as bitlayout
from fastsat.runs import load_checkpoint
from fastsat.train import main as train_main
from fastsat.write_beton import main as write_main
from tests import layouts
from tests.ffcv_read import read_all


@pytest.fixture(scope="module")
def teacher(trained):
    return trained[3] / "checkpoint.pt"


@pytest.fixture(scope="module")
def model_and_batch(teacher, digits):
    from fastsat.data import make_batches

    model = saliency.prepare_teacher(load_checkpoint(teacher, torch.device("cpu"))["model"])
    batch = next(make_batches(open_beton(digits["test"]), [], batch_size=24, workers=1,
                              device=torch.device("cpu"), train=False, seed=0).epoch(0))
    return model, batch.x.numpy().copy(), batch.y.numpy().copy()


def unit(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()


def test_grad_sign_is_the_autograd_gradient_sign(model_and_batch):
    model, images, labels = model_and_batch
    x = unit(images).requires_grad_(True)
    model(x)[torch.arange(len(labels)), torch.from_numpy(labels)].sum().backward()
    expected = (x.grad >= 0).permute(0, 2, 3, 1)
    got, _ = saliency.signs("grad_sign", model, unit(images), torch.from_numpy(labels))
    assert torch.equal(got, expected)


def test_gbp_is_the_guided_rule_on_a_two_layer_net():
    torch.manual_seed(1)
    d, h, k = 2 * 3 * 3, 16, 4
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k)).eval()
    x = torch.randn(5, 2, 3, 3)
    y = torch.tensor([0, 1, 2, 3, 1])
    w1, b1, w2 = net[1].weight, net[1].bias, net[3].weight
    z = x.flatten(1) @ w1.T + b1
    g_a = w2[y]  # ∂Φ_y/∂(ReLU output)
    g_z = (z > 0) * (g_a > 0) * g_a  # guided ReLU: positive input AND positive gradient
    g_x = (g_z @ w1).view_as(x)
    got, _ = saliency.signs("gbp", saliency.prepare_teacher(net), x, y)
    assert torch.equal(got, (g_x >= 0).permute(0, 2, 3, 1))
    plain, _ = saliency.signs("grad_sign", net, x, y)
    assert not torch.equal(got, plain)


def test_gbp_differs_from_grad_sign_on_a_trained_model(model_and_batch):
    model, images, labels = model_and_batch
    g, _ = saliency.signs("gbp", model, unit(images), torch.from_numpy(labels))
    s, _ = saliency.signs("grad_sign", model, unit(images), torch.from_numpy(labels))
    assert (g != s).float().mean() > 0.05


def test_gradcam_box(model_and_batch):
    model, images, labels = model_and_batch
    x, y = unit(images), torch.from_numpy(labels)
    cam = saliency.gradcam_pp(model, x, y)
    assert cam.shape == (len(y), 32, 32) and (cam >= 0).all()
    boxes, _ = saliency.signs("gradcam_pp_box", model, x, y)
    for m, b in zip(cam, boxes.numpy()):
        rows, cols = np.nonzero(b)
        assert b[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle, inside the image
        if m.max() > 0:
            r, c = np.unravel_index(int(m.argmax()), m.shape)
            assert b[r, c]  # holds its own map's peak


def test_cam_box_on_a_known_map():
    cam = torch.zeros(1, 10, 12)
    cam[0, 2:5, 3:9] = 0.8  # a large region ...
    cam[0, 3, 4] = 1.0  # ... holding the peak
    cam[0, 7:10, 0:2] = 0.9  # a smaller one
    box = saliency.cam_box(cam, 0.5)[0]
    expected = np.zeros((10, 12), bool)
    expected[2:5, 3:9] = True
    assert np.array_equal(box, expected)
    cam[0, 3, 4] = 0.8
    cam[0, 8, 1] = 1.0  # the peak moves to the small region: so does the box
    expected[:] = False
    expected[7:10, 0:2] = True
    assert np.array_equal(saliency.cam_box(cam, 0.5)[0], expected)
    assert saliency.cam_box(torch.zeros(1, 4, 4))[0].all()  # nothing to localise: whole image


@pytest.mark.parametrize("method", [m for m in saliency.SALIENCY if m != "smoothgrad"])  # (its noise is per batch)
def test_batched_equals_per_sample(model_and_batch, method):
    model, images, labels = model_and_batch
    batched, _ = saliency.compute(method, model, images[:6], labels[:6], batch_size=6, progress=False)
    single, _ = saliency.compute(method, model, images[:6], labels[:6], batch_size=1, progress=False)
    assert np.array_equal(batched, single)


def test_smoothgrad_is_deterministic(model_and_batch):
    model, images, labels = model_and_batch
    run = lambda seed: saliency.compute("smoothgrad", model, images[:4], labels[:4], params={"seed": seed,  # noqa: E731
                                        "samples": 4}, progress=False)[0]
    assert np.array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_tie_rule_and_nonfinite_maps():
    class Flat(nn.Module):  # output independent of the input: every gradient is 0
        def forward(self, x):
            return torch.zeros(len(x), 3) + 0 * x.sum((1, 2, 3))[:, None]

    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    positive, zeros = saliency.compute("grad_sign", Flat(), images, np.zeros(3, int), progress=False)
    assert positive.all() and zeros == 3

    class Root(nn.Module):  # ∂√s/∂x is infinite where the image is black
        def forward(self, x):
            return x.sum((1, 2, 3)).sqrt()[:, None].repeat(1, 3)

    images[1] = 0
    with pytest.raises(saliency.NonFiniteMap, match=r"samples \[1\]"):
        saliency.compute("grad_sign", Root(), images, np.zeros(3, int), batch_size=2, progress=False)


def test_a_method_that_needs_no_teacher_says_so(tmp_path):
    """A saliency method registered with needs_teacher=False is written without --teacher (its
    function gets teacher None, and the manifest names no teacher)."""
    @saliency.register_saliency("test_only_bright", granularity="pixel", needs_teacher=False,
                                description="+1 where the image is brighter than mid-grey")
    def bright(teacher, x, y):
        assert teacher is None
        return x.mean(1) > 0.5

    try:
        out = tmp_path / "b.beton"
        assert write_main(["--dataset", "digits", "--split", "test", "--out", str(out),
                           "--saliency", "test_only_bright"]) == 0
        m = json.loads((tmp_path / "b.beton.json").read_text())
        assert m["saliency"]["sal"]["source"] == {"method": "test_only_bright", "params": {}}
        images, stored = read_all(out)["image"], read_all(out)["sal"]
        expected = images.reshape(len(stored), 32, 32, 3).mean(3) / 255 > 0.5
        assert np.array_equal(bitlayout.unpack_np(stored, 32 * 32).reshape(-1, 32, 32), expected)
    finally:
        saliency.SALIENCY._entries.pop("test_only_bright")


def test_write_beton_with_teacher_maps(tmp_path, teacher, capsys):
    out = tmp_path / "t.beton"
    assert write_main(["--dataset", "digits", "--split", "test", "--out", str(out), "--saliency", "gbp",
                       "--teacher", str(teacher), "--saliency2", "gradcam_pp_box", "--sal2-param", "threshold=0.4",
                       "--sal-batch", "128"]) == 0
    m = json.loads((tmp_path / "t.beton.json").read_text())
    assert m["saliency"]["sal"]["source"]["method"] == "gbp"
    assert m["saliency"]["sal"]["source"]["teacher_blake2b"]
    assert m["saliency"]["sal2"]["source"]["params"] == {"threshold": 0.4}
    # a per-pixel box mixed with a per-element map: both stored per element
    assert m["saliency"]["sal"]["granularity"] == m["saliency"]["sal2"]["granularity"] == "element"
    got = read_all(out)  # a stock FFCV Loader reads both fields
    assert got["sal"].shape == got["sal2"].shape == (360, 32 * 32 * 3 // 8)
    box = bitlayout.unpack_np(got["sal2"], 32 * 32 * 3).reshape(-1, 32, 32, 3)
    assert (box == box[..., :1]).all()  # the widened box is the same for every channel


def test_sat_student_mixes_two_teacher_maps(tmp_path, teacher, tiny_flags):
    for split in ("train", "test"):
        assert write_main(["--dataset", "digits", "--split", split, "--out", str(tmp_path / f"{split}.beton"),
                           "--saliency", "grad_sign", "--teacher", str(teacher), "--saliency2", "gradcam_pp_box"]) == 0
    out = tmp_path / "student"
    assert train_main([*tiny_flags, "--train", str(tmp_path / "train.beton"), "--val", str(tmp_path / "test.beton"),
                       "--method", "sat", "--sal-mix", "--epochs", "1", "--out", str(out)]) == 0
    robust = json.loads((out / "robustness.json").read_text())
    assert "stored_map" in robust["attacks"]  # the student is also attacked along its teacher's map


def test_teacher_mismatch(tmp_path, teacher, capsys):
    layouts.cifar(tmp_path, "cifar10", per_batch=4)
    rc = write_main(["--dataset", "cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "c.beton"),
                     "--saliency", "grad_sign", "--teacher", str(teacher)])
    assert rc == 2 and "trained on digits, not cifar10" in capsys.readouterr().err
    rc = write_main(["--dataset", "digits", "--out", str(tmp_path / "d.beton"), "--saliency", "gbp"])
    assert rc == 2 and "needs --teacher" in capsys.readouterr().err
    rc = write_main(["--dataset", "digits", "--out", str(tmp_path / "d.beton"), "--saliency", "lime"])
    assert rc == 2 and "no 'lime' saliency" in capsys.readouterr().err


def test_sparse_teacher(tmp_path, teacher, tiny_flags):
    out = tmp_path / "sparse"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "1", "--width", "0.25", "--init", str(teacher),
                       "--sparsity", "0.95", "--out", str(out), "--eval-eps", "1"]) == 0
    model = load_checkpoint(out / "checkpoint.pt", torch.device("cpu"))["model"]
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.95 <= zero < 0.96


def test_grid_png(tmp_path, teacher, digits):
    png = tmp_path / "grid.png"
    assert saliency_grid.main(["--teacher", str(teacher), "--beton", str(digits["test"]), "--out", str(png),
                               "--n", "3", "--methods", "grad_sign,gbp,gradcam_pp_box"]) == 0
    assert png.stat().st_size > 5000
