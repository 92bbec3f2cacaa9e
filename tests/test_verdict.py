"""The verdict on the models it exists for: a robust model (the reference AutoAttack reached to its
last attack, channels_last), masked models (zero-gradient quantiser, saturated softmax), a
randomised model (EOT), any PyTorch classifier through ``fastsat.verdict``, and runs reused only
when they are what was asked for."""
import json

import pytest
import torch
from torch import nn

import fastsat
from fastsat.comparison import MASKED, side_by_side
from fastsat.compare import main as compare_main
from fastsat.config import TrainConfig
from fastsat.errors import MASKED_EXIT
from fastsat.evaluate import main as evaluate_main
from fastsat.robustness import grade, step_flags, table, white_box_rows
from fastsat.train import main as train_main

from test_robustness import Quantised as QuantisedBy
from test_robustness import as_data


@pytest.fixture(scope="module")
def robust(tmp_path_factory, tiny_flags, digits):
    """An FGSM-RS model trained a few epochs on digits (robust at small ε); (model, x, y)."""
    from fastsat.runs import load_checkpoint

    out = tmp_path_factory.mktemp("robust") / "run"
    assert train_main([*tiny_flags, "--method", "fgsm_rs", "--epochs", "6", "--width", "0.25", "--lr", "3e-3",
                       "--out", str(out), "--select", "last"]) == 0
    model = load_checkpoint(out / "checkpoint.pt", torch.device("cpu"))["model"]
    return model, out


def digits_batch(digits, n=64):
    import numpy as np

    from fastsat.reader import BetonReader

    reader = BetonReader(digits["test"])
    idx = np.arange(n)
    x = torch.from_numpy(reader.read("image", idx)).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(reader.read("label", idx))


class Counted:
    """Counts the calls of a method of a real class (the method itself still runs)."""

    def __init__(self, monkeypatch, cls, name="perturb"):
        self.calls = 0
        real = getattr(cls, name)

        def counted(this, *args, **kwargs):
            self.calls += 1
            return real(this, *args, **kwargs)
        monkeypatch.setattr(cls, name, counted)


def test_default_autoattack_reaches_fab_and_square_on_a_robust_channels_last_model(robust, digits, monkeypatch):
    """The crash the default protocol had: FAB / pyautoattack's checks ``.view()`` channels_last
    gradients, which happens only once samples survive APGD-CE and APGD-T."""
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    model, _ = robust
    assert model[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)  # as train's final report has it
    fab, square = Counted(monkeypatch, FABAttack_PT), Counted(monkeypatch, SquareAttack)
    x, y = digits_batch(digits, 48)
    cfg = TrainConfig(eval_eps=[2], eval_noise=[8], eval_aa="standard", eval_aa_steps=3, eval_aa_queries=30,
                      eval_checks=False)
    report = grade(model, as_data(x, y), cfg, 10, progress=False)
    assert fab.calls > 0 and square.calls > 0  # every AutoAttack component ran on surviving samples
    rows = report["attacks"]
    assert 0 < rows["autoattack"]["2"] <= report["clean"]
    assert rows["worst_case"]["2"] <= min(v["2"] for v in rows.values() if "2" in v)
    assert report["settings"]["autoattack"]["implementation"].startswith("pyautoattack ")


def test_reference_and_torchattacks_autoattack_agree_on_a_robust_model(robust, digits):
    """Two implementations of the standard AutoAttack: within 3 of 64 samples of each other."""
    from fastsat.attacks import AutoAttack

    model, _ = robust
    x, y = digits_batch(digits, 64)
    acc = {}
    for impl in ("pyautoattack", "torchattacks"):
        adv = AutoAttack(4 / 255, "standard", 10, steps=10, queries=100, seed=0, impl=impl)(model, x, y)
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6
        with torch.no_grad():
            acc[impl] = (model(adv).argmax(1) == y).sum().item()
    assert abs(acc["pyautoattack"] - acc["torchattacks"]) <= 3, acc


class Quantised(QuantisedBy):
    """round(255x)/255 before the model: the same predictions, zero input gradient everywhere."""

    def __init__(self, model):
        super().__init__(model, levels=255)


class Saturated(nn.Module):
    """softmax(1e4·z) as output: the argmax of the model, gradients that vanish."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(1e4 * self.model(x), dim=1)


class RandomTransform(nn.Module):
    """A random resize and noise before the model, active in eval mode (a randomised defence)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        size = int(torch.randint(x.shape[-1] - 4, x.shape[-1] + 1, ()).item())
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
        return self.model((x + 0.03 * torch.randn_like(x)).clamp(0, 1))


MASK_CFG = dict(eval_eps=[2, 8], eval_noise=[8], eval_steps=[20], eval_aa="apgd-ce", eval_aa_steps=5)


@pytest.mark.parametrize("wrapper", [Quantised, Saturated])
def test_masked_models_are_marked_and_the_worst_case_counts_the_checks(trained, wrapper):
    model, x, y, _ = trained
    report = grade(wrapper(model).eval(), as_data(x[:64], y[:64]), TrainConfig(**MASK_CFG), 10, progress=False)
    assert report["masked"] and report["failed_checks"]
    rows = report["attacks"]
    assert "square" in rows and "pgd40" in rows  # the checks' attacks are rows of the report
    best = min(v["8"] for name, v in rows.items() if "8" in v and name != "worst_case")
    assert rows["worst_case"]["8"] <= best
    assert rows["worst_case"]["8"] <= rows["square"]["8"] < rows["pgd20"]["8"]  # Square breaks what PGD cannot
    assert "black_box_not_better" in report["failed_checks"]


@pytest.mark.parametrize("by_steps, passed", [
    ({5: 26.0, 20: 12.8, 40: 13.4}, (True, True)),  # PGD-40 keeps 3 of 500 more: other random starts
    ({5: 26.0, 20: 12.8, 40: 15.0}, (False, True)),  # 2.2 points more with more steps
    ({5: 20.0, 20: 26.0, 40: 26.0}, (False, True)),  # more steps, more correct: masked gradients
    ({5: 30.0, 20: 20.0, 40: 17.0}, (True, False)),  # still falling after 20 steps
])
def test_step_checks_allow_what_random_starts_move_and_flag_more(by_steps, passed):
    flags = step_flags(by_steps, tol=0.2, eps=8)  # 500 samples: one is 0.2 points
    assert [f["name"] for f in flags] == ["monotone_in_steps", "pgd_converged"]
    assert tuple(f["passed"] for f in flags) == passed
    assert all(f["numbers"].get("tolerance", 2.0) == 2.0 for f in flags)


def test_black_box_check_never_compares_square_with_itself():
    rows = {"pgd20": {}, "autoattack": {}, "saliency": {}, "square": {}, "noise": {}, "stored_map": {}}
    assert white_box_rows(rows, ("apgd-ce", "apgd-t", "fab-t", "square")) == ["pgd20", "saliency"]
    assert white_box_rows(rows, ("apgd-ce", "apgd-dlr")) == ["pgd20", "autoattack", "saliency"]


def test_a_masked_run_is_marked_in_a_comparison_and_in_the_exit_code(trained, tmp_path, monkeypatch, capsys):
    import fastsat.evaluate as evaluate
    from fastsat.runs import load_checkpoint

    model, x, y, run = trained
    report = grade(Quantised(model).eval(), as_data(x[:64], y[:64]), TrainConfig(**MASK_CFG), 10,
                        progress=False)
    summaries = {"masked": [{"method": "standard", "seed": 0, "train_seconds": 1.0, "images_per_s": 1.0,
                             "robustness": report}]}
    rows = [r for r in side_by_side(summaries).splitlines() if r.startswith("| masked")]
    assert rows and all(MASKED in cell for cell in rows[0].split("|")[3:5])

    def quantised(path, device):
        ckpt = load_checkpoint(path, device)
        ckpt["model"] = Quantised(ckpt["model"]).eval()
        return ckpt
    monkeypatch.setattr(evaluate, "load_checkpoint", quantised)
    flags = ["--checkpoint", str(run / "checkpoint.pt"), "--eval-eps", "2,8", "--eval-limit", "32",
             "--eval-aa", "apgd-ce", "--eval-aa-steps", "3", "--eval-noise", "8", "--eval-checks"]
    assert evaluate_main([*flags, "--out", str(tmp_path / "a")]) == MASKED_EXIT
    assert "warning: gradient masking suspected" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "robustness.json").read_text())["masked"] is True
    assert "MASKED" in (tmp_path / "a" / "robustness.md").read_text()
    assert evaluate_main([*flags, "--out", str(tmp_path / "b"), "--no-fail-on-masking"]) == 0


def test_a_randomised_model_is_detected_and_attacked_with_eot(trained):
    model, x, y, _ = trained
    cfg = TrainConfig(eval_eps=[8], eval_noise=[8], eval_aa="standard", eval_aa_steps=2, eval_checks=False)
    report = grade(RandomTransform(model).eval(), as_data(x[:32], y[:32]), cfg, 10, progress=False)
    aa = report["settings"]["autoattack"]
    assert report["stochastic"] and aa["version"] == "rand" and aa["switched_from"] == "standard"
    assert aa["attacks"] == ["apgd-ce", "apgd-dlr"] and "stochastic" in json.dumps(report)
    plain = grade(model, as_data(x[:32], y[:32]), cfg, 10, progress=False)
    assert not plain["stochastic"] and plain["settings"]["autoattack"]["version"] == "standard"


def test_verdict_grades_any_pytorch_classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x = torch.rand(40, 3, 8, 8)
    y = net(x).argmax(1)
    report = fastsat.verdict(net, x, y, eps=[2 / 255, 8 / 255], aa_steps=3, aa_queries=20)
    assert report["clean"] == 100.0 and report["n"] == 40 and not report["masked"]
    assert set(report["attacks"]["worst_case"]) == {"2", "8"}
    assert report["attacks"]["worst_case"]["8"] <= report["attacks"]["worst_case"]["2"] <= 100
    assert report["settings"]["autoattack"]["version"] == "standard"


def test_verdict_takes_any_float_pixels_and_hands_a_train_mode_model_back_as_it_came():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(3 * 8 * 8, 10))
    x = torch.rand(24, 3, 8, 8)
    y = net(x).argmax(1)
    net.train()
    report = fastsat.verdict(net, x.double(), y, eps=[8 / 255], aa="apgd-ce", aa_steps=3, checks=False)
    assert net.training and "train mode" in report["mode"] and report["n"] == 24
    assert "mode" not in fastsat.verdict(net.eval(), x.half(), y, eps=[8 / 255], aa="apgd-ce", aa_steps=3,
                                         checks=False)


@pytest.mark.parametrize("call,word", [
    (lambda net, x, y: fastsat.verdict(nn.Sequential(net, nn.Unflatten(1, (10, 1))), x, y), "(N, classes)"),
    (lambda net, x, y: fastsat.verdict(lambda t: net(t), x, y), "torch.nn.Module"),
    (lambda net, x, y: fastsat.verdict(net, x * 2, y), "[0, 1]"),
    (lambda net, x, y: fastsat.verdict(net, x, y, eps=[0]), "fractions of 1"),
    (lambda net, x, y: fastsat.verdict(net, x, y, eps=[8]), "fractions of 1"),
    (lambda net, x, y: fastsat.verdict(net, x, y, aa="apgd-zz"), "--eval-aa"),
    (lambda net, x, y: fastsat.verdict(net, x, y, aa_impl="cleverhans"), "--eval-aa-impl"),
    (lambda net, x, y: fastsat.verdict(net, x, y[:3]), "integer tensor"),
    (lambda net, x, y: fastsat.verdict(net, x, y + 10), "labels must lie"),
    (lambda net, x, y: fastsat.verdict(net, torch.where(x > 0.5, float("nan"), x), y), "finite"),
    (lambda net, x, y: fastsat.verdict(net.double(), x, y), "float64"),
    (lambda net, x, y: fastsat.verdict(net.half(), x, y), "float16"),
])
def test_verdict_bad_input(call, word):
    from fastsat.errors import InputError

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(InputError, match=None) as e:
        call(net, x, y)
    assert word in str(e.value)


def test_missing_pyautoattack_is_one_line(trained, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # as if not installed
    code = evaluate_main(["--checkpoint", str(trained[3] / "checkpoint.pt"), "--out", str(tmp_path / "e"),
                          "--eval-eps", "2", "--eval-limit", "16", "--eval-aa", "apgd-ce", "--no-eval-checks"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pyautoattack" in err[0] and err[0].startswith("error:")


def test_compare_reuses_only_identical_runs(tmp_path, tiny_flags, digits, capsys):
    out = tmp_path / "cmp"
    flags = [*tiny_flags, "--methods", "standard", "--epochs", "1", "--out", str(out), "--eval-eps", "2",
             "--frontier-eps", "2"]
    assert compare_main(flags) == 0
    stamp = (out / "standard" / "summary.json").stat().st_mtime_ns
    assert compare_main(flags) == 0 and (out / "standard" / "summary.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other.beton"  # the same samples, another saliency field: other content
    from fastsat.write_beton import main as write_main
    assert write_main(["--dataset", "digits", "--split", "train", "--out", str(other), "--saliency", "none"]) == 0
    capsys.readouterr()
    for change, word in [(["--eps", "6"], "eps"), (["--epochs", "2"], "epochs"), (["--eval-eps", "4",
                         "--frontier-eps", "4"], "eval_eps"), (["--train", str(other)], "train beton content")]:
        assert compare_main([*flags, *change]) == 2, change
        err = capsys.readouterr().err.strip().splitlines()  # "== standard, seed 0", then the error
        assert len(err) <= 2 and err[-1].startswith("error:") and word in err[-1], (change, err)
    assert (out / "standard" / "summary.json").stat().st_mtime_ns == stamp  # the old run untouched
    assert compare_main([*flags, "--epochs", "2", "--beside"]) == 0
    beside = [p for p in out.iterdir() if p.name.startswith("standard-")]
    assert len(beside) == 1 and json.loads((beside[0] / "config.json").read_text())["config"]["epochs"] == 2
    assert compare_main([*flags, "--frontier-eps", "3"]) == 2
    assert "--frontier-eps 3 is not one of --eval-eps [2]" in capsys.readouterr().err


def test_adding_an_attack_leaves_the_other_rows_unchanged(trained):
    """Every attack draws from a stream named by the attack and ε, not by its position in the list."""
    model, x, y, _ = trained
    data = as_data(x[:48], y[:48])
    few = grade(model, data, TrainConfig(eval_eps=[2, 8], eval_noise=[8], eval_aa="none", eval_checks=False), 10,
                     progress=False)
    more = grade(model, data, TrainConfig(eval_eps=[1, 2, 8], eval_noise=[4, 8], eval_aa="apgd-ce",
                                               eval_aa_steps=2, eval_checks=False), 10, progress=False)
    for row in ("pgd20", "saliency"):
        assert {e: more["attacks"][row][e] for e in ("2", "8")} == few["attacks"][row]
    assert more["attacks"]["noise"]["8"] == few["attacks"]["noise"]["8"]


def test_the_cascade_gives_each_sample_the_worst_case_of_every_attack_on_every_sample(trained):
    """The cheaper grading attacks fewer samples and reaches the same per-sample verdict: each
    sample's random start is its own, so skipping the broken ones changes nobody else's outcome."""
    model, x, y, _ = trained
    data = as_data(x[:96], y[:96])
    cfg = dict(eval_eps=[2, 4, 8], eval_noise=[8, 32], eval_steps=[10], eval_aa="none", eval_checks=False)
    fast = grade(model, data, TrainConfig(**cfg), 10, progress=False)
    full = grade(model, data, TrainConfig(**cfg, eval_cascade=False), 10, progress=False)
    assert fast["settings"]["cascade"] and not full["settings"]["cascade"]
    assert fast["robust_indices"] == full["robust_indices"]
    assert fast["attacks"]["worst_case"] == full["attacks"]["worst_case"]
    assert 0 < fast["attacks"]["worst_case"]["2"] < fast["clean"]  # some samples broken, some not: a real test
    ran = lambda r: sum(n for by in r["ran_on"].values() for n in by.values())  # noqa: E731
    assert ran(fast) < ran(full) == 96 * sum(len(by) for by in full["ran_on"].values())
    # in run order, each row attacked exactly the samples the rows above it left correct
    order = list(fast["attacks"])[:-1]
    assert order == ["saliency", "pgd10", "noise"]
    first = round(fast["clean"] * 96 / 100)
    assert fast["ran_on"]["saliency"]["2"] == first
    assert fast["ran_on"]["pgd10"]["2"] == round(fast["attacks"]["saliency"]["2"] * 96 / 100)
    assert fast["ran_on"]["noise"]["32"] == 96  # not a worst-case ε: every sample, as without the cascade
    assert fast["attacks"]["noise"]["32"] == full["attacks"]["noise"]["32"]
    assert fast["attacks"]["pgd10"]["8"] <= full["attacks"]["pgd10"]["8"]
    assert "Cascade" in table(fast) and "Cascade" not in table(full)
