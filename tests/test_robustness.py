"""Verdicts: AutoAttack as torchattacks runs it, the per-sample worst case, gradient-masking flags,
stratified evaluation samples, the holdout and model selection, seeds with confidence intervals."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from fastsat.attacks import AutoAttack
from fastsat.beton import open_beton
from fastsat.comparison import mean_ci
from fastsat.config import TrainConfig
from fastsat.evaluate import main as evaluate_main
from fastsat.robustness import EvalData, grade, monotone_in_eps, sample_indices
from fastsat.subsets import holdout_split, stratified
from fastsat.train import main as train_main
from fastsat.trainer import collapsed


def as_data(x, y):
    """EvalData of a [0, 1] NCHW batch (stored as the uint8 NHWC the loaders give)."""
    x8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return EvalData(x8, y, None, None, np.arange(len(y)), {}, {"beton": "-", "dataset": "digits", "split": "test",
                                                               "size": len(y)})


def test_autoattack_row_is_torchattacks_autoattack(trained):
    import torchattacks

    model, x, y, _ = trained
    x, y = x[:48], y[:48]
    eps = 4 / 255
    ours = AutoAttack(eps, "standard", n_classes=10, steps=10, queries=300, seed=0, impl="torchattacks")
    theirs = torchattacks.AutoAttack(model.eval(), norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    theirs._autoattack.attacks[-1].n_queries = 300  # the same Square budget (5000 takes minutes on a CPU)
    with torch.no_grad():
        a = (model(ours(model, x, y)).argmax(1) == y).float().mean().item()
        b = (model(theirs(x, y)).argmax(1) == y).float().mean().item()
    assert abs(a - b) <= 1 / 48 + 1e-9, (a, b)


class Quantised(nn.Module):
    """A model behind a non-differentiable input quantiser round(levels·x)/levels: zero gradients
    everywhere (masking); at 255 levels the predictions on 8-bit images are the model's own."""

    def __init__(self, model, levels: int = 4):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


def small_cfg(**kw):
    return TrainConfig(**{"eval_eps": [2, 8], "eval_noise": [8], "eval_steps": [20], "eval_aa": "apgd-ce",
                          "eval_aa_steps": 5, **kw})


def test_worst_case_and_flags_on_a_normal_model(trained):
    model, x, y, _ = trained
    report = grade(model, as_data(x[:64], y[:64]), small_cfg(), 10, progress=False)
    rows = report["attacks"]
    for e, worst in rows["worst_case"].items():
        assert all(worst <= by_eps[e] for name, by_eps in rows.items() if e in by_eps)
        assert worst <= report["clean"]
    assert report["masking"]["passed"], report["masking"]


def test_masking_flags_fail_on_a_masked_model(trained):
    model, x, y, _ = trained
    masked = Quantised(model).eval()
    data = as_data(x[:64], y[:64])
    cfg = small_cfg(eval_aa="none")
    report = grade(masked, data, cfg, 10, progress=False)
    checks = {c["name"]: c for c in report["masking"]["checks"]}
    assert not report["masking"]["passed"]
    assert not checks["large_eps_breaks"]["passed"]
    assert not checks["black_box_not_better"]["passed"]


def test_monotone_and_convergence_flags_on_tables():
    assert monotone_in_eps({"pgd20": {"1": 80, "2": 60, "4": 30}}, tol=0.5)["passed"]
    bad = monotone_in_eps({"pgd20": {"1": 80, "2": 60, "4": 70}}, tol=0.5)
    assert not bad["passed"] and "pgd20 rises 60.0 → 70.0" in bad["detail"]
    assert monotone_in_eps({"noise": {"1": 10, "2": 90}}, tol=0.5)["passed"]  # noise is not optimised


def test_eval_sample_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 100)  # class-sorted, as an image-folder beton
    idx = sample_indices(labels, 100, seed=3)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert np.array_equal(idx, sample_indices(labels, 100, seed=3))
    assert not np.array_equal(idx, sample_indices(labels, 100, seed=4))
    uneven = np.array([0] * 90 + [1] * 10)
    assert np.bincount(uneven[stratified(uneven, 20, 0, "eval sample")]).tolist() == [18, 2]


def test_holdout_split_is_disjoint_and_reproducible():
    labels = np.repeat(np.arange(5), 40)
    train, held = holdout_split(labels, 0.1, seed=0)
    assert len(held) == 20 and not set(train) & set(held) and len(train) + len(held) == 200
    assert np.bincount(labels[held]).tolist() == [4] * 5
    assert np.array_equal(held, holdout_split(labels, 0.1, seed=0)[1])
    assert len(holdout_split(labels, 7, seed=0)[1]) == 7


def test_catastrophic_overfitting_guard():
    history = [30.0, 35.0, 41.0, 8.0, 9.0]  # FGSM's signature: holdout PGD collapses in one epoch
    flags = [collapsed(a, b, 20.0) for a, b in zip([None, *history], history)]
    assert flags == [False, False, False, True, False]


def test_run_selects_on_the_holdout(tmp_path, tiny_flags):
    out = tmp_path / "run"
    assert train_main([*tiny_flags, "--method", "fgsm_rs", "--epochs", "3", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"holdout_clean", "holdout_pgd"} <= set(m) for m in lines)
    assert not any(m.get("catastrophic_overfitting") for m in lines)
    best = [m for m in lines if m["best"]][-1]
    if not any(m.get("below_clean_floor") for m in lines):  # every epoch competed: the highest PGD, earliest
        assert best == max(lines, key=lambda m: (m["holdout_pgd"], -m["epoch"]))
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == best["epoch"] + 1
    report = json.loads((out / "robustness.json").read_text())
    assert report["selected"]["epoch"] == best["epoch"] and report["selected"]["checkpoint"] == "best.pt"
    config = json.loads((out / "config.json").read_text())
    held = np.array(config["holdout"]["indices"])
    labels = open_beton(config["config"]["train"]).labels
    assert np.array_equal(held, holdout_split(labels, 0.1, seed=0)[1])
    assert sum(config["holdout"]["per_class"].values()) == len(held)
    assert report["n"] == 64 and sum(report["per_class"].values()) == 64 and len(report["indices"]) == 64


def test_mean_ci_is_the_t_interval():
    from scipy import stats

    values = [70.0, 72.5, 69.0]
    mean, half = mean_ci(values)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((hi - lo) / 2)
    assert mean_ci([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("flags,word", [
    (["--eval-aa", "apgd-xx"], "--eval-aa"),
    (["--eval-eps", "0,2"], "--eval-eps must be in [0.25, 255]"),
    (["--eval-steps", "-5"], "--eval-steps must be >= 1"),
    (["--eval-limit", "-5"], "--eval-limit must be >= 0"),
    (["--eval-eps", "abc"], "--eval-eps"),
])
def test_evaluate_bad_input(trained, tmp_path, capsys, flags, word):
    out = tmp_path / "ev"
    assert evaluate_main(["--checkpoint", str(trained[3] / "checkpoint.pt"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and word in err[0]
    assert not out.exists()


def test_evaluate_prints_autoattack_worst_case_and_flags(trained, tmp_path, capsys):
    assert evaluate_main(["--checkpoint", str(trained[3] / "checkpoint.pt"), "--out", str(tmp_path), "--eval-eps", "2",
                          "--eval-limit", "32", "--eval-checks"]) == 0
    out = capsys.readouterr().out
    assert "| autoattack |" in out and "| **worst_case** |" in out and "Gradient-masking checks" in out


def replay(epochs, ratio=0.5, key="holdout_pgd"):
    """The epoch ``trainer.better`` keeps, fed (clean, pgd) pairs in order."""
    from fastsat.trainer import better

    best, seen = {}, []
    for epoch, (clean, pgd) in enumerate(epochs):
        line = {"epoch": epoch, "holdout_clean": clean, "holdout_pgd": pgd}
        seen.append(clean)
        if better(line, best, key, ratio * max(seen)):
            best.update(epoch=epoch, score=line[key], clean=clean)
    return best["epoch"]


def test_robust_selection_passes_over_a_collapsed_epoch():
    # near-chance clean accuracy with a few points of "robust" accuracy (the digits SAT run): not kept
    assert replay([(22.0, 9.7), (90.0, 3.1), (96.5, 2.8)]) == 1
    assert replay([(22.0, 9.7), (96.5, 2.8), (90.0, 3.1)]) == 2  # the next epoch above the floor replaces it
    assert replay([(22.0, 9.7), (96.5, 2.8)], ratio=0.0) == 0  # floor off: robust accuracy alone
    # catastrophic overfitting: clean rises, PGD collapses — the robust epoch stays selected
    assert replay([(70.0, 35.0), (80.0, 41.0), (90.0, 0.5)]) == 1
    assert replay([(70.0, 35.0), (80.0, 41.0), (90.0, 41.0)]) == 1  # ties: the earlier epoch
    assert replay([(50.0, 0.0), (80.0, 0.0), (85.0, 0.0)], key="holdout_clean") == 2


def test_selection_criterion_comes_from_the_method():
    from fastsat.trainer import criterion

    assert criterion(TrainConfig(method="standard")) == "clean" == criterion(TrainConfig(method="noise"))
    assert criterion(TrainConfig(method="sat")) == "robust" == criterion(TrainConfig(method="pgd_sat"))
    assert criterion(TrainConfig(method="standard", select="robust")) == "robust"
