"""Smoke test of the benchmark: `bench/throughput.py --quick` runs end to end and writes its JSON
and plot with every section (structure only: speeds belong to bench/, not to tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert {"machine", "kernel", "train_step", "loader", "goals"} <= set(data)
    assert {r["provider"] for r in data["kernel"]["results"]} == {"cpu", "eager"}
    methods = [r["method"] for r in data["train_step"]]
    assert methods == ["standard", "noise", "sat", "sign", "fgsm_rs", "n_fgsm", "pgd", "pgd_sat", "trades", "trades_sat"]
    assert all(r["images_per_s"] > 0 and r["relative_to_standard"] > 0 for r in data["train_step"])
    assert {"ffcv image+label", "ffcv +sal", "ffcv +sal+sal2", "torch DataLoader +sal+sal2"} <= set(data["loader"])
    assert {"sat_over_standard", "pgd_sat_over_pgd", "loader_over_model", "saliency_overhead"} <= set(data["goals"])
    assert (tmp_path / "throughput.png").stat().st_size > 5000
    assert "| sat |" in proc.stdout


@pytest.mark.slow
def test_epoch_bench_runs_both_loaders(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "epoch.py"), "--samples", "300", "--model", "resnet10",
                           "--width", "0.125", "--batch-size", "64", "--epochs", "1", "--methods", "standard,sat",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "epoch.json").read_text())
    assert [(r["loader"], r["method"]) for r in data["results"]] == [
        ("ffcv", "standard"), ("ffcv", "sat"), ("resident", "standard"), ("resident", "sat")]
    assert all(r["epoch_s"] > 0 and r["images_per_s"] > 0 for r in data["results"])
    assert set(data["ratios"]) == {"ffcv: sat / standard", "resident: sat / standard"}
    assert (tmp_path / "epoch.png").stat().st_size > 5000 and (tmp_path / "epoch.md").is_file()


def test_grading_bench_breaks_the_time_down(tmp_path, trained):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "grading.py"), "--checkpoint",
                           str(trained[3] / "checkpoint.pt"), "--eval-limit", "16", "--eval-eps", "2,8", "--eval-aa",
                           "apgd-ce", "--runs", "1x1,2x1", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "grading.json").read_text())
    rows = {(r["row"], r["eps"]) for r in data["rows"]}
    assert {("pgd20", "2"), ("pgd20", "8"), ("autoattack", "8")} <= rows and data["n"] == 16
    assert data["train_s"] > 0 and sum(r["seconds"] for r in data["rows"]) <= data["total_s"] * 1.01
    assert "| pgd20 |" in proc.stdout
    assert [(r["procs"], r["threads"], r["same_verdict"]) for r in data["ranks"]] == [(1, 1, True), (2, 1, True)]
    assert [len(r["rank_seconds"]) for r in data["ranks"]] == [1, 2]
    assert data["passes"]["forward"] > data["passes"]["backward"] > 0 and data["training"]["passes_per_s"] > 0
    assert not (tmp_path / "scratch_run").exists()  # the timed training epoch's folder is removed
