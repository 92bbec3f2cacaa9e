"""fastsat.train end to end on the digits betons: bookkeeping, resume, config, bad input, DDP."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from fastsat.compare import main as compare_main
from fastsat.config import TrainConfig, load_config
from fastsat.kernels.spec import EPS0
from fastsat.evaluate import main as evaluate_main
from fastsat.train import main as train_main
from fastsat.errors import InputError


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_everything(tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_flags, "--method", "sat", "--epochs", "2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "summary.json", "robustness.json",
            "robustness.md", "robustness.png"} <= names
    lines = metrics(out)
    assert [m["epoch"] for m in lines] == [0, 1]
    assert {"loss", "train_acc", "holdout_clean", "holdout_pgd", "epoch_seconds", "images_per_s"} <= set(lines[0])
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["method"] == "sat" and "torch" in saved and "git_commit" in saved
    robust = json.loads((out / "robustness.json").read_text())
    assert set(robust["attacks"]) == {"pgd20", "autoattack", "saliency", "noise", "stored_map", "worst_case"}
    assert robust["n"] == 64 and robust["settings"]["seed"] == 0
    assert "| pgd20 |" in capsys.readouterr().out
    again = load_config(["--config", str(out / "config.json"), "--out", str(tmp_path / "again")])  # train it again
    assert {**dataclasses.asdict(again), "out": str(out), "units": "1/255"} == saved["config"]


def test_resume_gives_the_same_metrics(tmp_path, tiny_flags):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    # the per-epoch SAT schedule: with --sat-schedule run, more epochs would be another schedule (refused)
    flags = [*tiny_flags, "--method", "sat", "--eval-eps", "2", "--sat-schedule", "epoch"]
    assert train_main([*flags, "--epochs", "3", "--out", str(straight)]) == 0
    assert train_main([*flags, "--epochs", "1", "--out", str(resumed)]) == 0  # "interrupted" after epoch 1
    assert train_main([*flags, "--epochs", "3", "--out", str(resumed), "--resume"]) == 0
    keys = ("epoch", "loss", "train_acc", "holdout_clean", "holdout_pgd")
    assert [{k: m[k] for k in keys} for m in metrics(straight)] == [{k: m[k] for k in keys} for m in metrics(resumed)]
    report = [json.loads((run / "robustness.json").read_text()) for run in (straight, resumed)]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "rank_seconds")} for r in report][0] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "rank_seconds")} for r in report][1]  # all but the wall times


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.toml").write_text('method = "pgd"\nepochs = 7\neval_eps = [1, 2]\n')
    cfg = load_config(["--config", str(tmp_path / "c.toml"), "--epochs", "9"])
    assert (cfg.method, cfg.epochs, cfg.eval_eps) == ("pgd", 9, [1, 2])
    (tmp_path / "c.yaml").write_text("method: trades\nbogus: 1\n")
    with pytest.raises(InputError, match="unknown keys bogus"):
        load_config(["--config", str(tmp_path / "c.yaml")])


@pytest.mark.parametrize("flags,word", [
    (["--method", "magic"], "invalid choice: 'magic'"),
    (["--model", "resnet9000"], "unknown model"),
    (["--eps", "300"], "--eps must be in [0.25, 255]"),
    (["--eps", "0.0314"], "no longer fractions of 1: 0.0314 of 1 is 8.007"),  # the old unit: a hint
    (["--pgd-alpha", "0.0078"], "--pgd-alpha must be in [0.25, 255]"),
    (["--eval-eps", "0.03,8"], "--eval-eps must be in"),
    (["--eps", "8/0"], "not an ε in 1/255"),
    (["--hybrid-p", "-0.1"], "--hybrid-p must be in"),
    (["--method", "sat", "--sal-mix"], "no saliency field 'sal2'"),
])
def test_bad_input(tmp_path, tiny_flags, capsys, flags, word):
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert word in err[-1]


def test_eps_like_values_are_in_1_255_everywhere(tmp_path):
    """Flags, config files and written fractions give the same ε; attacks get fractions of 1."""
    from fastsat.config import load_config

    (tmp_path / "c.toml").write_text('eps = "8/255"\npgd_alpha = 2\neval_eps = ["2/255", 4]\n')
    a = load_config(["--eps", "8", "--pgd-alpha", "2/255", "--eval-eps", "2,4/255"])
    b = load_config(["--config", str(tmp_path / "c.toml")])
    for cfg in (a, b):
        assert (cfg.eps, cfg.pgd_alpha, cfg.eval_eps) == (8.0, 2.0, [2, 4])
        assert cfg.fraction("eps") == pytest.approx(8 / 255) and cfg.fraction("pgd_alpha") == pytest.approx(2 / 255)
    assert TrainConfig().eps == 8 and TrainConfig().fraction("eps") == pytest.approx(EPS0)


def test_configs_saved_in_the_old_unit_are_read_in_the_new_one():
    from fastsat.config import saved_config, upgrade

    old = {**{k: v for k, v in saved_config(TrainConfig()).items() if k != "units"}, "eps": 4 / 255,
           "pgd_alpha": 1 / 255, "retired_key": 1}
    new = upgrade(old)
    assert new["eps"] == pytest.approx(4) and new["pgd_alpha"] == pytest.approx(1) and "retired_key" not in new
    assert upgrade(saved_config(TrainConfig(eps=4)))["eps"] == 4  # today's unit: unchanged
    assert TrainConfig(**new).validate().eps == pytest.approx(4)


def test_saliency_method_on_a_beton_without_saliency(tmp_path, tiny_flags, capsys):
    from tests import layouts
    from fastsat.write_beton import main as write_main

    layouts.cifar(tmp_path, "cifar10", per_batch=8)
    for split in ("train", "test"):
        assert write_main(["--dataset", "cifar10", "--root", str(tmp_path), "--split", split,
                           "--out", str(tmp_path / f"{split}.beton")]) == 0
    flags = [*tiny_flags, "--train", str(tmp_path / "train.beton"), "--val", str(tmp_path / "test.beton")]
    assert train_main([*flags, "--method", "pgd_sat", "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    assert "no saliency field 'sal'" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(out), "--method", "standard"]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(out), "--method", "noise"]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    assert train_main([*tiny_flags, "--epochs", "2", "--out", str(out), "--method", "noise", "--resume"]) == 2
    assert "method is 'noise' but the run" in capsys.readouterr().err


def test_evaluate_checkpoint_and_mismatch(tmp_path, tiny_flags, digits, capsys):
    out = tmp_path / "run"
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(out), "--method", "standard"]) == 0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--eval-eps", "1,3", "--eval-limit", "32",
                          "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "robustness.json").read_text())["attacks"]["pgd20"].keys() == {"1", "3"}
    from tests import layouts
    from fastsat.write_beton import main as write_main

    layouts.cifar(tmp_path, "cifar100", per_batch=4)
    assert write_main(["--dataset", "cifar100", "--root", str(tmp_path), "--split", "test",
                       "--out", str(tmp_path / "c100.beton")]) == 0
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--val", str(tmp_path / "c100.beton")]) == 2
    assert "100 classes" in capsys.readouterr().err


def test_gpu_resident_loader_matches_ffcv(tmp_path, tiny_flags):
    a, b = tmp_path / "a", tmp_path / "b"
    flags = [*tiny_flags, "--method", "sat", "--epochs", "1", "--eval-eps", "2"]
    assert train_main([*flags, "--out", str(a)]) == 0
    assert train_main([*flags, "--out", str(b), "--gpu-resident"]) == 0
    keys = ("loss", "train_acc", "holdout_clean", "holdout_pgd")
    assert [{k: m[k] for k in keys} for m in metrics(a)] == [{k: m[k] for k in keys} for m in metrics(b)]
    # and with ffcv hidden, the run falls back to fastsat's own reader with the same result
    c = tmp_path / "c"
    code = ("import sys; sys.modules['ffcv'] = None; from fastsat.train import main; "
            f"sys.exit(main({[*flags, '--out', str(c)]!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [{k: m[k] for k in keys} for m in metrics(a)] == [{k: m[k] for k in keys} for m in metrics(c)]


def test_compare_runner(tmp_path, tiny_flags, capsys):
    out = tmp_path / "cmp"
    flags = [*tiny_flags, "--methods", "standard,sat", "--epochs", "1", "--out", str(out), "--seeds", "2"]
    assert compare_main(flags) == 0
    table = [row for row in (out / "comparison.md").read_text().splitlines() if row.startswith("|")]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["standard", "sat"]
    assert " ± " in table[2] and "2 seeds (0, 1): mean ± 95% t-interval" in (out / "comparison.md").read_text()
    assert {p.name for p in (out / "sat").iterdir()} == {"seed0", "seed1"}
    assert (out / "frontier.png").stat().st_size > 1000
    stamp = (out / "sat" / "seed1" / "summary.json").stat().st_mtime_ns
    assert compare_main(flags) == 0  # finished runs are reused, not trained again
    assert (out / "sat" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    assert compare_main([*flags[:-2], "--seeds", "0"]) == 2


def test_compare_jobs_train_in_processes_and_a_failing_one_ends_all(tmp_path, tiny_flags, capsys):
    """--jobs 2: the runs are trained by two processes (each one thread) and read back by the table;
    a run that cannot start (its folder holds something else) ends the comparison in one line."""
    import multiprocessing

    out = tmp_path / "cmp"
    flags = [*tiny_flags, "--methods", "standard,noise,sign", "--epochs", "1", "--out", str(out), "--jobs", "2"]
    (out / "sign").mkdir(parents=True)
    (out / "sign" / "notes.txt").write_text("not a run")
    assert compare_main(flags) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "sign, seed 0" in err[0] and "another run" in err[0], err
    assert not multiprocessing.active_children()
    (out / "sign" / "notes.txt").unlink()
    assert compare_main(flags) == 0
    for method in ("standard", "noise", "sign"):
        summary = json.loads((out / method / "summary.json").read_text())
        assert summary["method"] == method


def test_frontier_labels_of_close_points_are_spread():
    from fastsat.plots import spread_labels

    points = [(400, 34.0), (440, 34.0), (380, 35.6), (1800, 35.0), (700, 76.8)]
    heights = spread_labels(points, x_near=350, y_gap=3.0)
    cluster = sorted(heights[:3])
    assert all(b - a >= 3.0 for a, b in zip(cluster, cluster[1:]))  # one cluster: no two labels collide
    assert all(h >= y for h, (_, y) in zip(heights, points))  # never below its point
    assert heights[3:] == [35.0, 76.8]  # a point far away in x or y keeps its label at itself


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, tiny_flags):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "fastsat.train", *tiny_flags, "--epochs", "1", "--method", "sat", "--out", str(out),
           "--device", "cpu", "--eval-eps", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = metrics(out)
    assert line["ranks_agree"] is True
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1


def test_samples_without_saliency_get_random_bits(tmp_path):
    """Flowers-17 images kept without a trimap (has_sal = 0) feed SAT fresh random bits, identically
    through the FFCV and the device-resident loaders."""
    from fastsat.beton import open_beton
    from fastsat.data import make_batches
    from fastsat.write_beton import main as write_main
    from tests import layouts

    truth = layouts.flowers17(tmp_path)
    out = tmp_path / "f.beton"
    assert write_main(["--dataset", "flowers17", "--root", str(tmp_path), "--side", "16", "--missing-mask", "keep",
                       "--out", str(out)]) == 0
    info = open_beton(out)
    kw = dict(batch_size=2, workers=1, device=torch.device("cpu"), train=True, seed=3)
    ffcv_batches = [b for e in range(2) for b in make_batches(info, ["sal"], **kw).epoch(e)]
    resident = [b for e in range(2) for b in make_batches(info, ["sal"], resident=True, **kw).epoch(e)]
    for a, b in zip(ffcv_batches, resident):
        assert all(torch.equal(u, v) for u, v in zip((a.x, a.y, a.bits), (b.x, b.y, b.bits)))
    batches = make_batches(info, ["sal"], **{**kw, "train": False})  # every sample in every epoch
    fills = []
    for e in range(2):
        for (_, _, stored, _, has), batch in zip(batches.raw_epoch(e), batches.epoch(e)):
            keep, fed = has.bool(), batch.bits
            assert torch.equal(fed[keep], stored[keep])  # real maps pass through untouched
            assert not stored[~keep].any()  # written as zeros ...
            fills += list(fed[~keep])
    assert len(fills) == 2 and all(f.any() for f in fills)  # ... fed as random bits
    assert not torch.equal(fills[0], fills[1])  # fresh in every epoch
    assert truth[2][1] is None and sum(t[1] is None for t in truth.values()) == 1


def test_lr_schedules_per_step():
    import math

    from fastsat.config import TrainConfig
    from fastsat.trainer import lr_at

    one = TrainConfig(lr=0.2, lr_schedule="onecycle", warmup=0.4)
    assert [round(lr_at(one, p), 6) for p in (0.0, 0.2, 0.4, 0.7, 1.0)] == [0.0, 0.1, 0.2, 0.1, 0.0]
    cos = TrainConfig(lr=0.2, lr_schedule="cosine")
    assert lr_at(cos, 0.5) == pytest.approx(0.1) and lr_at(cos, 0.0) == 0.2
    step = TrainConfig(lr=0.2, lr_schedule="step")
    assert [lr_at(step, p) for p in (0.49, 0.5, 0.8)] == pytest.approx([0.2, 0.02, 0.002])
    assert lr_at(TrainConfig(lr=0.2), 0.9) == 0.2 and not math.isnan(lr_at(one, 0.999))


def test_label_smoothing_reaches_the_loss():
    import torch.nn.functional as F

    from fastsat.config import TrainConfig
    from fastsat.batch import Batch
    from fastsat.methods import training_loss
    from fastsat.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).eval()
    x, y = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8), torch.randint(0, 10, (8,))
    cfg = TrainConfig(method="standard", flip=False, pad=0, label_smoothing=0.1)
    loss, logits = training_loss(cfg, model, Batch(x, y), p_random=1.0, seed=0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_compare_gives_each_method_its_recipe_and_a_csv_log(tmp_path, tiny_flags, capsys):
    (tmp_path / "recipes.toml").write_text('[standard]\noptimizer = "sgd"\nlr = 0.05\nweight_decay = 5e-4\n'
                                           'lr_schedule = "onecycle"\n')
    out = tmp_path / "cmp"
    flags = [*tiny_flags, "--methods", "standard", "--epochs", "2", "--out", str(out), "--eval-eps", "2",
             "--log-csv", "--recipes", str(tmp_path / "recipes.toml")]
    assert compare_main(flags) == 0
    cfg = json.loads((out / "standard" / "config.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["lr_schedule"]) == ("sgd", 0.05, 5e-4, "onecycle")
    assert "Recipes" in (out / "comparison.md").read_text()
    rows = (out / "standard" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,lr,loss")
    (tmp_path / "bad.toml").write_text('[standard]\nout = "elsewhere"\n')
    capsys.readouterr()
    assert compare_main([*flags[:-1], str(tmp_path / "bad.toml")]) == 2
    assert "not training settings" in capsys.readouterr().err


def test_more_epochs_on_resume_is_another_run_under_the_run_schedule(tmp_path, tiny_flags, capsys):
    """With --sat-schedule run, P(random) at every step depends on the epoch count: extending a run
    would change the schedule it was trained under, so it is refused unless --allow-change."""
    out = tmp_path / "r"
    flags = [*tiny_flags, "--method", "sat", "--eval-eps", "2", "--out", str(out)]
    assert train_main([*flags, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert train_main([*flags, "--epochs", "2", "--resume"]) == 2
    assert "epochs is 2 but the run" in capsys.readouterr().err
