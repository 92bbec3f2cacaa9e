"""Exported models load with timm alone (plus fastsat's architecture registration) and give the
same logits; the data config and the RobustBench entry say what the run was."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from fastsat.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
ROBUSTBENCH_FIELDS = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"}


LOADER = """
import json, os, sys, torch, timm
import fastsat.models  # the architecture registration, nothing else of fastsat
out, x_file, result = sys.argv[1:4]
cfg = json.load(open(os.path.join(out, "config.json")))
weights = os.path.join(out, "model.safetensors")
paths = {  # every way timm users load a model
    "local-dir": lambda: timm.create_model("local-dir:" + out, pretrained=True),
    "hf-hub": lambda: timm.create_model("hf-hub:fastsat/exported", pretrained=True),  # an offline Hub cache
    "pretrained file": lambda: timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                                                 pretrained_cfg_overlay=dict(file=weights)),
    "checkpoint_path": lambda: timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"],
                                                 **cfg["model_args"], pretrained_cfg_overlay=cfg["pretrained_cfg"],
                                                 checkpoint_path=weights),
}
wrong = {  # ways that would give random weights: each must raise
    "pretrained, no file": lambda: timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"]),
    "pretrained, another width": lambda: timm.create_model(cfg["architecture"], pretrained=True, width=0.5,
                                                           in_chans=cfg["model_args"]["in_chans"],
                                                           pretrained_cfg_overlay=dict(file=weights)),
    "local-dir without weights": lambda: timm.create_model("local-dir:" + os.path.dirname(out), pretrained=True),
}
x = torch.load(x_file)["x"]
got = {}
for name, make in paths.items():
    net = make().eval()
    data = timm.data.resolve_data_config(model=net)
    mean, std = torch.tensor(data["mean"]).view(1, -1, 1, 1), torch.tensor(data["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        got[name] = {"logits": net((x - mean) / std), "data": data}
raised = {}
for name, make in wrong.items():
    try:
        make()
        raised[name] = None
    except Exception as e:
        raised[name] = type(e).__name__
torch.save({"got": got, "raised": raised, "fastsat_modules": sorted(m for m in sys.modules if m.startswith("fastsat"))},
           result)
"""


def offline_hub(tmp_path, exported: Path) -> dict:
    """A Hugging Face Hub cache holding the export as repo fastsat/exported, read offline: the real
    ``hf-hub:`` code path of timm and huggingface_hub, with no network."""
    import shutil

    repo = tmp_path / "hub" / "models--fastsat--exported"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(exported, repo / "snapshots" / commit)
    return {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}


def test_export_loads_through_every_timm_path_in_a_fresh_process(trained, tmp_path):
    import os

    model, x, y, run = trained
    out = tmp_path / "exported"
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    torch.save({"x": x[:16].clone()}, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "x.pt"), str(tmp_path / "r.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, **offline_hub(tmp_path, out)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "r.pt", weights_only=False)
    with torch.no_grad():
        want = model(x[:16])
    manifest = json.loads(Path(str(json.loads((run / "config.json").read_text())["config"]["train"]) + ".json")
                          .read_text())
    assert set(result["got"]) == {"local-dir", "hf-hub", "pretrained file", "checkpoint_path"}
    for path, got in result["got"].items():
        assert torch.allclose(got["logits"], want, atol=1e-4), (path, (got["logits"] - want).abs().max())
        assert got["data"]["input_size"] == (3, 32, 32), path
        assert list(got["data"]["mean"]) == manifest["mean"] and list(got["data"]["std"]) == manifest["std"], path
    assert all(result["raised"].values()), result["raised"]  # none gave a model silently
    assert set(result["fastsat_modules"]) <= {"fastsat", "fastsat.models"}
    entry = json.loads((out / "robustbench.json").read_text())
    assert ROBUSTBENCH_FIELDS <= set(entry) and entry["eps"] == "8/255" and entry["dataset"] == "digits"
    assert isinstance(entry["clean_acc"], str) and entry["fastsat"]["evaluation"] == "done"
    assert entry["fastsat"]["method"] == "standard" and "worst_case" in entry["fastsat"]


def card_metadata(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_model_card_holds_the_verdict_in_model_index(trained, tmp_path):
    run = trained[3]
    out = tmp_path / "card"
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    meta = card_metadata(card)
    report = json.loads((run / "robustness.json").read_text())
    (result,) = meta["model-index"][0]["results"]
    metrics = {m["name"]: m["value"] for m in result["metrics"]}
    assert meta["library_name"] == "timm" and result["dataset"]["type"] == "digits"
    assert metrics["clean accuracy"] == round(report["clean"], 2)
    aa = report["attacks"]["autoattack"].get("8")  # at the training ε, where the run graded it
    assert metrics.get("AutoAttack accuracy (Linf, eps 8/255)") == (None if aa is None else round(aa, 2))
    assert ("AutoAttack at 8/255: not run" in card) == (aa is None)
    for e, v in report["attacks"]["worst_case"].items():
        assert metrics[f"worst-case accuracy over every attack run (Linf, eps {e}/255)"] == round(v, 2)
    assert f"n = {report['n']}" in card and "hf-hub:" in card and "Unreliable" not in card


def test_a_masked_verdict_is_marked_in_the_card(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    report = json.loads((run / "robustness.json").read_text())
    report.update(masked=True, failed_checks=["large_eps"])
    (run / "robustness.json").write_text(json.dumps(report))
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "e")]) == 0
    card = (tmp_path / "e" / "README.md").read_text()
    names = [m["name"] for m in card_metadata(card)["model-index"][0]["results"][0]["metrics"]]
    assert "**Unreliable verdict" in card and "large_eps" in card
    assert all("unreliable" in n for n in names if n != "clean accuracy")
    assert json.loads((tmp_path / "e" / "robustbench.json").read_text())["unreliable"] is True


def test_export_refuses_an_existing_folder_and_says_when_the_verdict_is_missing(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    (run / "robustness.json").unlink()
    out = tmp_path / "e"
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    entry = json.loads((out / "robustbench.json").read_text())
    assert entry["fastsat"]["evaluation"] == "missing" and entry["autoattack_acc"] is None
    capsys.readouterr()
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out), "--overwrite"]) == 0


def test_registered_models_carry_a_data_config():
    import timm

    import fastsat.models  # noqa: F401

    net = timm.create_model("fastsat_resnet10_cifar", num_classes=10, in_chans=1, width=0.25)
    data = timm.data.resolve_data_config(model=net)
    assert data["input_size"] == (1, 32, 32) and data["crop_pct"] == 1.0
    over = timm.create_model("fastsat_resnet10_cifar", num_classes=10, in_chans=1,
                             pretrained_cfg_overlay={"input_size": (1, 28, 28), "mean": (0.3,), "std": (0.2,)})
    assert timm.data.resolve_data_config(model=over)["input_size"] == (1, 28, 28)
