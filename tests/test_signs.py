"""The decisive study (``fastsat.signs``): its tests agree with scipy's, its results are read from the
run files alone, the committed plan fixes what the study runs and precedes its results, and the
README's answer is generated from ``results.json``."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t, ttest_1samp, ttest_rel

from fastsat.runfiles import RunFiles
from fastsat.signs import (ARMS, CLAIMS, default_folder, reading, results_md, study_configs, study_results)
from fastsat.stats import two_sided_claims

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs/fm/signs"


def test_paired_tests_are_scipys_and_holm_spans_both_claims():
    rng = np.random.default_rng(0)
    sign = rng.normal(45, 3, 20)
    better = sign + 1.5 + rng.normal(0, 1, 20)
    same = sign + rng.normal(0, 0.3, 20)
    res = two_sided_claims({"better": list(better - sign), "same": list(same - sign)}, margin=1.0)
    assert res["better"]["p_higher"] == pytest.approx(ttest_rel(better, sign, alternative="greater").pvalue)
    assert res["better"]["p_lower"] == pytest.approx(ttest_rel(better, sign, alternative="less").pvalue)
    assert res["better"]["decision"] == "higher" and "tost" not in res["better"]
    tost = max(ttest_1samp(same - sign, -1.0, alternative="greater").pvalue,
               ttest_1samp(same - sign, 1.0, alternative="less").pvalue)
    assert res["same"]["decision"] == "undecided" and res["same"]["tost"]["p"] == pytest.approx(tost)
    assert res["same"]["tost"]["equivalent"]
    # Holm: p = 0.02 decides a claim alone (2 tests: 0.02 <= 0.05 / 2), not beside a decided one (4 tests:
    # the second step needs 0.05 / 3)
    dev = rng.normal(0, 1, 20)
    d = (dev - dev.mean()) / dev.std(ddof=1) + t.isf(0.02, 19) / np.sqrt(20)
    assert ttest_1samp(d, 0.0, alternative="greater").pvalue == pytest.approx(0.02)
    assert two_sided_claims({"x": list(d)}, margin=1.0)["x"]["decision"] == "higher"
    both = two_sided_claims({"x": list(d), "y": list(better - sign)}, margin=1.0)
    assert both["x"]["decision"] == "undecided" and both["y"]["decision"] == "higher"


def _plan(seeds=(7, 8, 9, 10), masking=(7, 8)):
    return {"arms": {a: {"method": m, "train_beton": b} for a, (m, b) in ARMS.items()}, "seeds": list(seeds),
            "claims": {c: list(v) for c, v in CLAIMS.items()}, "alpha": 0.05,
            "equivalence": {"margin": 1.0}, "masking": {"seeds": list(masking)},
            "student": {"model": "resnet10", "width": 0.25, "epochs": 4, "select": "last", "eval_limit": 0,
                        "device": "cpu"}}


def _write_run(cfg, pgd8: float, masked: bool = False):
    folder = Path(cfg.out)
    folder.mkdir(parents=True)
    rob = {"n": 10_000, "clean": 80.0 + pgd8 / 10, "attacks": {"pgd20": {"4": pgd8 + 20, "8": pgd8}}}
    RunFiles(folder).summary.write_text(json.dumps({"robustness": rob}))
    default_folder(cfg).mkdir()
    RunFiles(default_folder(cfg)).report.write_text(json.dumps({"attacks": {"worst_case": {"8": pgd8 - 3}},
                                                                 "masked": masked}))


class _Paths:
    def path(self, name, split="train"):
        return Path(f"/nowhere/{name}_{split}.beton")


@pytest.mark.parametrize("masked", [False, True])
def test_results_are_read_from_the_run_files(tmp_path, masked):
    plan = _plan()
    cfgs = study_configs(plan, tmp_path, _Paths())
    base = {7: 40.0, 8: 43.0, 9: 41.5, 10: 44.0}
    shift = {"sign (random ±ε)": 0.0, "sat (silhouette)": 5.0, "sat (adv-teacher GBP)": -5.0}
    for (arm, seed), cfg in cfgs.items():
        _write_run(cfg, base[seed] + shift[arm] + 0.1 * (seed % 3), masked and arm == "sat (silhouette)" and seed == 8)
    res = study_results(plan, cfgs)
    assert res["arms"]["sign (random ±ε)"]["seeds"] == [7, 8, 9, 10]
    assert res["arms"]["sign (random ±ε)"]["PGD-20 8/255"] == [base[s] + 0.1 * (s % 3) for s in (7, 8, 9, 10)]
    silhouette, gbp = (res["claims"][c]["primary"] for c in CLAIMS)
    assert silhouette["mean"] == pytest.approx(5.0) and gbp["mean"] == pytest.approx(-5.0)
    assert silhouette["decision"] == ("void (masked)" if masked else "higher") and gbp["decision"] == "lower"
    assert res["arms"]["sat (silhouette)"]["default"]["seeds"] == [7, 8]
    text = reading(res)
    assert ("void: a masking check failed" in text) == masked and "the map is lower" in text
    assert text in results_md(res)


def test_study_configs_pair_every_seed_across_arms(tmp_path):
    plan = _plan()
    cfgs = study_configs(plan, tmp_path, _Paths())
    assert len(cfgs) == len(ARMS) * 4
    for (arm, seed), cfg in cfgs.items():
        assert cfg.seed == seed and cfg.method == ARMS[arm][0] and cfg.select == "last" and cfg.eval_limit == 0
        assert Path(cfg.out).parent.parent == tmp_path / "study"


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not (STUDY / "plan.json").is_file(), reason="the plan is not committed yet")
def test_the_committed_plan_fixes_the_study_and_came_first():
    plan = json.loads((STUDY / "plan.json").read_text())
    pilot = json.loads((STUDY / "pilot" / "pilot.json").read_text())
    assert plan["recipe"] == pilot["choice"]["chosen"]
    assert set(plan["seeds"]).isdisjoint(pilot["seeds"]) and len(plan["seeds"]) == 20
    cfgs = study_configs(plan, STUDY, _Paths())
    assert len(cfgs) == 60
    for cfg in cfgs.values():
        assert all(getattr(cfg, k) == v for k, v in plan["student"].items())
    if not (ROOT / ".git").exists():
        return
    added = _git("log", "--diff-filter=A", "--format=%H %ct", "--reverse", "--", "docs/fm/signs/study").split()
    planned = _git("log", "--diff-filter=A", "--format=%H %ct", "--", "docs/fm/signs/plan.json").split()
    if added:  # the plan's commit is an ancestor of the first commit with a study result
        first = added[0]
        ancestor = subprocess.run(["git", "-C", str(ROOT), "merge-base", "--is-ancestor", planned[0], first])
        assert ancestor.returncode == 0
        assert planned[0] != first


def test_the_readme_answer_is_generated_from_the_results():
    readme = (ROOT / "README.md").read_text()
    if not (STUDY / "results.json").is_file():
        assert "<!-- answer:signs -->" not in readme
        return
    res = json.loads((STUDY / "results.json").read_text())
    block = readme.split("<!-- answer:signs -->\n")[1].split("\n<!-- /answer:signs -->")[0]
    assert block == reading(res)
    assert results_md(res) == (STUDY / "results.md").read_text()
