"""Grading on several processes (torch.distributed, gloo on CPU) gives the one process's verdict
sample for sample — AutoAttack and Square included — on a partly robust and on a masked model,
with uneven shards and more ranks than batches; a rank that dies ends the job in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastsat
from fastsat.errors import InputError
from fastsat.evaluate import main as evaluate_main

from test_robustness import Quantised

ROOT = Path(__file__).resolve().parents[1]
# every kind of row: white-box (PGD, saliency), AutoAttack's APGD and its black-box Square, the
# Square masking check, noise; a cascade, so the rows run on samples earlier rows left
PROTOCOL = dict(eps=[1 / 255, 2 / 255], aa="apgd-ce,square", aa_steps=5, aa_queries=40, noise=[2 / 255],
                checks=True, batch_size=16)


def outcome(report: dict) -> dict:
    """What must not depend on the number of ranks: every row, the survivors, the checks."""
    checks = [(c["name"], c["passed"]) for c in report.get("masking", {}).get("checks", [])]
    return {"clean": report["clean"], "attacks": report["attacks"], "robust_indices": report["robust_indices"],
            "ran_on": report["ran_on"], "masked": report["masked"], "stochastic": report["stochastic"],
            "checks": checks}


@pytest.fixture(scope="module")
def one_process(trained):
    model, x, y, _ = trained
    return fastsat.verdict(model, x[:100], y[:100], **PROTOCOL)


@pytest.mark.parametrize("procs", [2, 3])
def test_ranks_give_the_one_process_verdict_sample_for_sample(trained, one_process, procs):
    """100 samples in batches of at most 16 (7 batches: uneven over 2 and 3 ranks)."""
    model, x, y, _ = trained
    sharded = fastsat.verdict(model, x[:100], y[:100], **PROTOCOL, procs=procs)
    assert sharded["ranks"] == procs and one_process["ranks"] == 1
    assert 0 < one_process["attacks"]["worst_case"]["1"] < 100  # partly robust: the rows decide something
    assert one_process["ran_on"]["autoattack"]["1"] > 0 and one_process["ran_on"]["square"]["2"] > 0
    assert outcome(sharded) == outcome(one_process)
    # where each rank's time went: every rank listed, waiting only for others (none alone)
    assert len(sharded["rank_seconds"]) == procs and one_process["rank_seconds"][0]["waiting"] == 0
    assert all(t["working"] > 0 and t["waiting"] >= 0 for t in sharded["rank_seconds"])


def test_autoattack_no_longer_depends_on_its_batch_neighbours(trained):
    """A batch's AutoAttack draws come from its samples' indices: the same samples in the same
    batches give the same outcome, whatever ran before (torch's global stream is left alone)."""
    model, x, y, _ = trained
    kw = dict(PROTOCOL, checks=False, noise=[1 / 255])
    a = fastsat.verdict(model, x[:48], y[:48], **kw)
    torch.rand(1000)  # the global stream moves; the verdict must not
    state = torch.get_rng_state()
    b = fastsat.verdict(model, x[:48], y[:48], **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert outcome(a) == outcome(b)


def test_a_masked_model_is_flagged_the_same_on_two_ranks(trained):
    model, x, y, _ = trained
    masked = Quantised(model, levels=255).eval()
    one = fastsat.verdict(masked, x[:40], y[:40], **PROTOCOL)
    two = fastsat.verdict(masked, x[:40], y[:40], **PROTOCOL, procs=2)
    assert one["masked"] and outcome(one) == outcome(two)


def test_more_ranks_than_batches(trained):
    model, x, y, _ = trained
    few = dict(PROTOCOL, checks=False)
    assert outcome(fastsat.verdict(model, x[:5], y[:5], **few, procs=3)) == \
        outcome(fastsat.verdict(model, x[:5], y[:5], **few))


class DiesOnRankOne(torch.nn.Module):
    """The model, except that rank 1's process is killed (SIGKILL) at its first forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.model(x)


def test_a_rank_that_dies_ends_the_job_in_one_line(trained):
    model, x, y, _ = trained
    with pytest.raises(InputError) as e:
        fastsat.verdict(DiesOnRankOne(model), x[:40], y[:40], **dict(PROTOCOL, checks=False), procs=2)
    assert "died" in str(e.value) and "\n" not in str(e.value)


def evaluate_flags(run: Path, out: Path) -> list[str]:
    return ["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out), "--eval-eps", "1,2", "--eval-limit", "96",
            "--eval-aa", "apgd-ce", "--eval-aa-steps", "5", "--no-eval-checks", "--eval-noise", "2"]


def test_evaluate_on_torchrun_ranks_and_on_its_own_ranks(trained, tmp_path, capsys):
    """`torchrun --nproc_per_node 2 -m fastsat.evaluate` and `--eval-procs 2` write the one report
    one process writes (rank 0 alone writes; the report says how many ranks graded)."""
    run = trained[3]
    assert evaluate_main(evaluate_flags(run, tmp_path / "one")) == 0
    assert evaluate_main([*evaluate_flags(run, tmp_path / "own"), "--eval-procs", "2"]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "fastsat.evaluate", *evaluate_flags(run, tmp_path / "torchrun")]
    proc = subprocess.run(torchrun, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {k: json.loads((tmp_path / k / "robustness.json").read_text()) for k in ("one", "own", "torchrun")}
    assert [r["ranks"] for r in reports.values()] == [1, 2, 2]
    assert outcome(reports["own"]) == outcome(reports["one"]) == outcome(reports["torchrun"])
    assert proc.stdout.count("| **worst_case** |") == 1  # one rank printed the table


def test_eval_procs_refuses_nonsense(trained, tmp_path, capsys):
    assert evaluate_main([*evaluate_flags(trained[3], tmp_path / "x"), "--eval-procs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --eval-procs must be >= 1, got 0"] and not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
