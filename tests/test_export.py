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


def test_export_round_trip_through_timm_in_a_fresh_process(trained, tmp_path, capsys):
    model, x, y, run = trained
    out = tmp_path / "exported"
    assert export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    torch.save({"x": x[:16].clone()}, tmp_path / "x.pt")
    code = f"""
import json, sys, torch, timm
import fastsat.models  # the architecture registration, nothing else of fastsat
cfg = json.load(open({str(out / 'config.json')!r}))
net = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"], **cfg["model_args"],
                        pretrained_cfg_overlay=cfg["pretrained_cfg"], checkpoint_path={str(out / 'model.safetensors')!r}).eval()
data = timm.data.resolve_data_config(model=net)
x = torch.load({str(tmp_path / 'x.pt')!r})["x"]
mean, std = torch.tensor(data["mean"]).view(1, -1, 1, 1), torch.tensor(data["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    logits = net((x - mean) / std)
torch.save({{"logits": logits, "data": data, "fastsat_modules": sorted(m for m in sys.modules if m.startswith("fastsat"))}},
           {str(tmp_path / 'out.pt')!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    with torch.no_grad():
        want = model(x[:16])
    assert torch.allclose(got["logits"], want, atol=1e-4), (got["logits"] - want).abs().max()
    manifest = json.loads(Path(str(json.loads((run / "config.json").read_text())["config"]["train"]) + ".json")
                          .read_text())
    assert got["data"]["input_size"] == (3, 32, 32)
    assert list(got["data"]["mean"]) == manifest["mean"] and list(got["data"]["std"]) == manifest["std"]
    assert set(got["fastsat_modules"]) <= {"fastsat", "fastsat.models"}
    entry = json.loads((out / "robustbench.json").read_text())
    assert ROBUSTBENCH_FIELDS <= set(entry) and entry["eps"] == "8/255" and entry["dataset"] == "digits"
    assert isinstance(entry["clean_acc"], str) and entry["fastsat"]["evaluation"] == "done"
    assert entry["fastsat"]["method"] == "standard" and "worst_case" in entry["fastsat"]


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
