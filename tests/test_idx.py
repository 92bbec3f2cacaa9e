"""MNIST-family IDX files and single-channel images end to end: writer, beton, methods, saliency."""
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsat.beton import open_beton
from fastsat.config import TrainConfig
from fastsat.batch import Batch
from fastsat.kernels import bits as bitlayout
from fastsat.methods import METHODS, train_step
from fastsat.models import build_model
from fastsat.reader import BetonReader
from fastsat.saliency import SALIENCY, compute
from fastsat.write_beton import main as write_main
from tests.ffcv_read import read_all
from tests.layouts import idx_bytes, write_idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_writer_round_trip(tmp_path, gz):
    truth = write_idx(tmp_path / "raw", gz=gz)
    for split in ("train", "test"):
        out = tmp_path / f"{split}.beton"
        assert write_main(["--dataset", "fashion-mnist", "--root", str(tmp_path), "--split", split,
                           "--out", str(out)]) == 0  # found in ROOT/raw/, as torchvision keeps them
        images, labels = truth[split]
        got = read_all(out)  # a stock FFCV Loader
        assert got["image"].shape == (len(labels), 28, 28, 1)
        assert np.array_equal(got["image"][..., 0], images) and np.array_equal(got["label"].ravel(), labels)
        mask = bitlayout.unpack_np(got["sal"], 28 * 28).reshape(-1, 28, 28).astype(bool)
        assert mask[:, 6:22, 6:22].all() and not mask[:, :6].any()  # silhouette, hole filled
        info = open_beton(out)
        assert info.image_shape == (28, 28, 1) and info.manifest["image_write_mode"] == "array"
        assert np.array_equal(BetonReader(out).read("image"), got["image"])


@pytest.mark.parametrize("damage,word", [
    (lambda p: p.write_bytes(idx_bytes(0x802, np.zeros((3, 28, 28), np.uint8))), "magic number"),
    (lambda p: p.write_bytes(idx_bytes(0x803, np.zeros((3, 28, 28), np.uint8))[:-5]), "truncated"),
    (lambda p: p.write_bytes(idx_bytes(0x803, np.zeros((3, 28, 28), np.uint8))), "3 images but"),
    (lambda p: p.unlink(), "not found"),
])
def test_idx_bad_files(tmp_path, capsys, damage, word):
    write_idx(tmp_path, gz=False)
    damage(tmp_path / "train-images-idx3-ubyte")
    out = tmp_path / "x.beton"
    assert write_main(["--dataset", "fashion-mnist", "--root", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and "train-images-idx3-ubyte" in err[0]
    assert not out.exists()


def gray_batch(n=16):
    x = torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    return x, y, bitlayout.pack_torch(torch.rand(n, 28 * 28) < 0.5)


@pytest.mark.parametrize("name", list(METHODS))
def test_one_channel_model_trains_with_every_method(name):
    x, y, bits = gray_batch()
    model = build_model("resnet10", 10, [0.3], [0.3], width=0.125)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig(method=name, pgd_steps=2)
    for step in range(2):
        loss, _ = train_step(cfg, model, opt, Batch(x, y, bits, "pixel"), p_random=0.9, seed=step)
        assert torch.isfinite(loss)


@pytest.mark.parametrize("method", list(SALIENCY))
def test_saliency_on_one_channel(method):
    model = build_model("resnet10", 10, [0.3], [0.3], width=0.125).eval()
    x, y, _ = gray_batch(4)
    positive, _ = compute(method, model, x.numpy(), y.numpy(), progress=False)
    expected = (4, 28, 28) if SALIENCY.get(method).granularity == "pixel" else (4, 28, 28, 1)
    assert positive.shape == expected


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="the Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_silhouette(tmp_path):
    from fastsat.writers import open_writer

    samples = open_writer("fashion-mnist", "test")
    assert len(samples) == 10_000 and samples.source.image_shape == (28, 28, 1)
    assert np.bincount(samples.labels).tolist() == [1000] * 10
    ink = samples.images[..., 0] > 0
    assert (samples.masks >= ink).all()  # every non-background pixel is inside the silhouette
    filled = (samples.masks & ~ink).mean()
    assert filled < 0.05  # holes filled: a few percent of the pixels, not the background


def test_reproduce_quick_end_to_end(tmp_path, capsys):
    """The paper's protocol on a small IDX set, two seeds: betons, teachers (shared), teacher maps,
    every student per seed, both evaluations, the seed-paired claims table, frontier, grids; a
    second call finds everything done and trains nothing; from what the study commits (no betons, no
    students' checkpoints) it rebuilds the betons bit for bit, refuses one that differs from what a
    run used, and trains again only a student that was not graded."""
    import json
    import shutil

    from fastsat.reproduce import CLAIMS, MAPS, STUDENTS, main

    write_idx(tmp_path / "fm", n_train=200, n_test=64)
    flags = ["--dataset", "fashion-mnist", "--root", str(tmp_path / "fm"), "--out", str(tmp_path / "r"),
             "--budget", "quick", "--device", "cpu", "--seeds", "2"]
    assert main(flags + ["--status"]) == 2  # nothing there yet
    assert main(flags) == 0
    out = tmp_path / "r"
    table = (out / "table.md").read_text()
    assert all(label in table for label in STUDENTS) and "PGD-5 ε=8/255" in table
    assert "2 seeds (0, 1): mean ± 95% t-interval" in table and "seed-paired differences over 2 seeds" in table
    assert all(f"| {claim} |" in table for claim, *_ in CLAIMS)
    assert "| sat (weak map) > random signs |" in table and "Teachers and their maps are shared" in table
    res = json.loads((out / "results.json").read_text())
    for label in ("sat (weak map)", "standard"):  # P(random) only where a map drives the perturbation
        picks = res[label]["selected"]
        assert [p["epoch"] for p in picks] == [0, 0] and all(0 < p["p_random"] < 1 for p in picks)
        assert f"{label}: 0" + (f" ({picks[0]['p_random']:.2f}), 0 (" if label != "standard" else ", 0;") in table
    assert all(r["seeds"] == [0, 1] and len(r["PGD-5"]["acc"]["8"]) == 2 for r in res.values())
    assert (out / "frontier.png").stat().st_size > 1000 and (out / "grid_t_adv.png").stat().st_size > 1000
    timing = json.loads((out / "timing.json").read_text())  # one epoch per student, timed one after another
    assert list(timing) == list(STUDENTS) and all(t["epoch_seconds"] > 0 and t["steps"] > 0 for t in timing.values())
    assert not (out / "timing_run").exists() and all(res[k]["epoch_seconds"] == timing[k]["epoch_seconds"] for k in res)
    assert "Cost: one training epoch" in table and "epoch s (timed alone), left / right" in table
    record = json.loads((out / "reproduce.json").read_text())
    trained = [k for k in record["steps"] if k.startswith("train students")]
    assert len(trained) == 2 * len(STUDENTS)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert main(flags) == 0  # resumable: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps
    built = _content_ids(out)
    _only_what_is_committed(out)  # a fresh clone: betons and the students' checkpoints gone
    capsys.readouterr()
    assert main(flags + ["--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = 2 + 2 + len(MAPS) + 1 + 2 * len(STUDENTS) + 1  # betons, teachers, map betons, grids, students, timing
    assert lines[0] == f"{total - 2 - len(MAPS)} of {total} steps done" and lines[1] == "running: none"
    assert lines[2] == "ready: beton train, beton test, " + ", ".join(f"beton {m}" for m in MAPS)
    record = out / "students" / "standard" / "seed0" / "config.json"
    kept = record.read_text()
    saved = json.loads(kept)
    record.write_text(json.dumps({**saved, "data": {**saved["data"], "train": "0" * 64}}))
    assert main(flags) == 2  # a beton that comes out otherwise than the runs used is refused
    err = capsys.readouterr().err.strip().splitlines()  # (the rebuild's progress bars, then the one line)
    assert [line for line in err if line.startswith("error:")] == err[-1:]
    assert "train.beton written again differs from the one" in err[-1] and "seed0 used" in err[-1]
    assert not (out / "data" / "train.beton").exists()
    record.write_text(kept)
    ungraded = out / "students" / "noise" / "seed1"  # trained, its full test not done, its checkpoint gone
    shutil.rmtree(ungraded / "full_test")
    assert main(flags) == 0  # the betons are rebuilt bit for bit, so no other student is trained again
    assert _content_ids(out) == built and (ungraded / "full_test" / "robustness.json").is_file()
    again = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert {p for p in stamps if again[p] != stamps[p]} == {ungraded / "summary.json"}


def _content_ids(out: Path) -> dict:
    import json

    from fastsat.beton import content_id

    return {p.name: content_id(json.loads(p.read_text())) for p in (out / "data").glob("*.beton.json")}


def _only_what_is_committed(out: Path) -> None:
    """Remove what the study's .gitignore leaves out: betons, and every checkpoint but the teachers'
    ones their maps come from."""
    import shutil

    from fastsat.reproduce import TEACHERS

    shutil.rmtree(out / "data")
    keep = {out / "teachers" / name / ckpt for name, (_, ckpt) in TEACHERS.items()}
    for p in out.rglob("*.pt"):
        if p not in keep:
            p.unlink()


def _res(acc: dict, n: int = 500, masked=()) -> dict:
    """Claims input: per student its accuracies (%) at ε 8 under both gradings, one per seed."""
    acc = {k: v if isinstance(v, list) else [v] for k, v in acc.items()}
    return {k: {"seeds": list(range(len(v))), "train_seconds": [1.0] * len(v), "masked": k in masked,
                "PGD-5": {"n": n, "acc": {"8": v}}, "worst case": {"n": n, "acc": {"8": v}}} for k, v in acc.items()}


def claim_cells(res: dict) -> dict:
    """The cells of the three-seed study's claims."""
    from fastsat.reproduce import CLAIMS
    from fastsat import stats

    return stats.claim_cells(res, CLAIMS)


def test_claim_verdicts_non_inferiority_and_holm():
    """> holds only above 0, ≥ only above −1 point (non-inferiority), after Holm over the whole table."""
    from fastsat.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.5]) == [True, False, False, False]  # 0.01 ≤ .05/4; 0.03 > .05/3 stops
    assert holm([0.001, 0.012, 0.02]) == [True, True, True]
    big = _res({"sat (weak map)": 55.0, "noise": 50.0}, n=10_000)
    assert claim_cells(big)["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "holds"
    small = _res({"sat (weak map)": 55.0, "noise": 50.0}, n=100)
    assert claim_cells(small)["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "unresolved"
    rev = _res({"sat (weak map)": 45.0, "noise": 50.0}, n=10_000)
    assert claim_cells(rev)["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "reversed"
    # ≥ with a 1-point margin: −2 points on 500 images is not shown ≥ (it used to "hold")
    ni = _res({"pgd_sat (adv-teacher GBP)": 48.0, "pgd": 50.0})
    assert claim_cells(ni)["PGD-SAT ≥ PGD"][("PGD-5", "8")].verdict == "unresolved"
    ni = _res({"pgd_sat (adv-teacher GBP)": 80.0, "pgd": 80.0}, n=100_000)
    assert claim_cells(ni)["PGD-SAT ≥ PGD"][("PGD-5", "8")].verdict == "holds"
    ni = _res({"pgd_sat (adv-teacher GBP)": 75.0, "pgd": 80.0}, n=100_000)
    assert claim_cells(ni)["PGD-SAT ≥ PGD"][("PGD-5", "8")].verdict == "refuted"
    masked = _res({"sat (weak map)": 90.0, "noise": 50.0}, n=10_000, masked={"sat (weak map)"})
    cell = claim_cells(masked)["SAT > noise (silhouette map)"][("PGD-5", "8")]
    assert cell.masked and cell.text().endswith("masked: no verdict")


def test_holm_makes_a_borderline_cell_unresolved_in_a_larger_table():
    """The same difference holds alone, but not among many tests (the family-wise correction)."""
    pair = {"sat (weak map)": 53.4, "noise": 50.0}  # z ≈ 2.4 on 2,500 images each: p ≈ 0.008 one-sided
    alone = claim_cells(_res(pair, n=2500))
    assert alone["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "holds"
    crowd = claim_cells(_res({**pair, "standard": 20.0, "sat (adv-teacher GBP)": 30.0}, n=2500))
    assert crowd["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "unresolved"


def test_reading_says_no_more_than_the_cells():
    from fastsat.stats import reading

    res = _res({"sat (weak map)": 55.0, "noise": 50.0, "standard": 49.5}, n=10_000)
    text = reading(claim_cells(res))
    assert "**SAT > noise (silhouette map)**: holds in every cell." in text
    assert "**noise > standard**: unresolved in every cell." in text


def test_committed_claims_are_generated_from_the_committed_numbers():
    """docs/fm/table.md's claims and the README's reading of them are what the numbers give, and the
    README's table rows are table.md's."""
    import json

    from fastsat.reproduce import CLAIMS
    from fastsat.stats import claims, reading

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    if not (root / "docs/fm/results.json").is_file():  # the study is under way: no claim may be read yet
        assert "<!-- claims:fm -->" not in readme and "**The three-seed study is under way**" in readme
        return
    res = json.loads((root / "docs/fm/results.json").read_text())
    assert claims(res, CLAIMS) in (root / "docs/fm/table.md").read_text()
    block = readme.split("<!-- claims:fm -->\n")[1].split("\n<!-- /claims:fm -->")[0]
    assert block == reading(claim_cells(res))
    section = readme.split("## The paper's protocol on Fashion-MNIST")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows and set(rows) <= set((root / "docs/fm/table.md").read_text().splitlines())  # copied, not retyped


def test_claims_over_seeds_use_the_seed_paired_differences():
    """Three seeds: a difference that is steady across seeds holds even where one seed's test sample
    could not decide it; one that flips sign across seeds is unresolved however large n is."""
    steady = claim_cells(_res({"sat (weak map)": [52.0, 53.1, 52.6], "noise": [50.0, 51.0, 50.5]}, n=500))
    cell = steady["SAT > noise (silhouette map)"][("PGD-5", "8")]
    assert cell.df == 2 and cell.d == pytest.approx(2.067, abs=1e-3) and cell.verdict == "holds"
    assert cell.sample_margin > cell.d  # one seed's test sample alone would not have decided it
    flipping = claim_cells(_res({"sat (weak map)": [55.0, 46.0, 56.0], "noise": [50.0, 50.0, 50.0]}, n=100_000))
    assert flipping["SAT > noise (silhouette map)"][("PGD-5", "8")].verdict == "unresolved"


def test_status_tells_running_from_ready_and_waiting(tmp_path):
    """A step whose claim a live process holds is running; one whose needs are done is ready; the rest wait."""
    from fastsat.files import Claim
    from fastsat.schedule import Step, status

    never = lambda: False  # noqa: E731
    plan = [Step("a", (), lambda: True, None), Step("b", ("a",), never, None), Step("c", ("a",), never, None),
            Step("d", ("b",), never, None)]
    with Claim(tmp_path / "b"):
        lines = status(tmp_path, plan).splitlines()
    assert lines == ["1 of 4 steps done", "running: b", "ready: c", "waiting: d"]
    assert status(tmp_path, plan).splitlines()[1:3] == ["running: none", "ready: b, c"]


def test_reproduce_refuses_fewer_than_one_seed(tmp_path, capsys):
    from fastsat.reproduce import main

    assert main(["--out", str(tmp_path / "r"), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --seeds must be >= 1, got 0"] and not (tmp_path / "r").exists()


def test_reach_is_the_bar_the_strongest_cell_must_pass():
    """The note's "what it can decide" is Holm's first-step bar: a lone cell of 3 seeds holds just
    above it and is unresolved just below."""
    import re

    from fastsat.stats import reach

    bar = float(re.search(r"lies ([\d.]+) standard errors", reach(3, 4)).group(1))  # one claim: 2 cells, 2 tests each
    for factor, verdict in ((1.02, "holds"), (0.98, "unresolved")):
        d = bar * factor / 3 ** 0.5  # seed differences 1 − s, 1, 1 + s: mean 1, standard error s / √3
        cells = claim_cells(_res({"sat (weak map)": [51.0 - 1 / d, 51.0, 51.0 + 1 / d], "noise": [50.0] * 3}))
        cell = cells["SAT > noise (silhouette map)"][("PGD-5", "8")]
        assert cell.d / cell.se == pytest.approx(bar * factor, rel=1e-3) and cell.verdict == verdict
