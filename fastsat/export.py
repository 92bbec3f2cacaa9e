"""python -m fastsat.export: a fastsat run's model for the tools around it — timm + safetensors, a
RobustBench-style model card.

    python -m fastsat.export --checkpoint runs/x/best.pt --out exported/x

Writes OUT/model.safetensors (the timm network's own state dict: timm-native keys, plain tensors,
no pickle; its metadata carries the data config), OUT/config.json (timm's hub layout: architecture,
num_classes, model_args, pretrained_cfg with the run's input size, mean and std), OUT/README.md (a
model card: the Hugging Face Hub's ``model-index`` metadata, the verdict with its masking flags, the
recipe) and OUT/robustbench.json (RobustBench's ``model_info`` fields from the run's verdict, plus
fastsat's: worst case, masking flags, training images/s, epochs, seed). Normalisation is carried as
timm carries it: in ``pretrained_cfg``, which ``timm.data.resolve_data_config`` / ``create_transform``
apply, so the network takes (x − mean) / std of pixels x in [0, 1]. Every timm loading path gives
the exported weights and data config, with fastsat's architecture registration the only import:

    import timm, fastsat.models
    model = timm.create_model("local-dir:OUT", pretrained=True)   # or "hf-hub:<user>/<repo>" once pushed
    model = timm.create_model("fastsat_resnet10_cifar", pretrained=True, width=0.25, in_chans=1,
                              pretrained_cfg_overlay=dict(file="OUT/model.safetensors"))

A run without a verdict (no robustness.json beside the checkpoint) is still exported; its
robustbench.json then says "evaluation": "missing" and holds no accuracy.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import json
import shutil
import sys
from functools import partial
from pathlib import Path

from .config import upgrade
from .options import eps_key
from .runfiles import RunFiles, read_json
from .errors import ArgumentParser, InputError, run_cli
from .files import atomic_write, atomic_write_text


CARRIED = ("crop_pct", "interpolation", "first_conv", "classifier", "license")  # of timm's pretrained_cfg


def timm_config(ckpt: dict) -> dict:
    """config.json in timm's hub layout for the checkpoint's model."""
    from .models import build_model, timm_name

    a = ckpt["model_args"]
    net = build_model(a["name"], a["num_classes"], a["mean"], a["std"], a.get("width", 1.0))[1]
    h, w, c = a["image_shape"]
    model_args = {"in_chans": c, **({"width": a["width"]} if a.get("width", 1.0) != 1.0 else {})}
    pretrained_cfg = {**{k: net.pretrained_cfg[k] for k in CARRIED if k in net.pretrained_cfg},
                      "input_size": [c, h, w], "mean": list(a["mean"]), "std": list(a["std"]),
                      "num_classes": a["num_classes"]}
    return {"architecture": timm_name(a["name"]), "num_classes": a["num_classes"],
            "model_args": model_args, "pretrained_cfg": pretrained_cfg}


def robustbench_entry(ckpt: dict, run: Path, name: str) -> dict:
    """RobustBench's model_info fields (strings as its entries write them) and fastsat's additions."""
    from .models import timm_name

    cfg = upgrade(ckpt["config"])
    files = RunFiles(run)
    report_path, summary_path = files.report, files.summary
    entry = {"link": "", "name": name, "authors": "", "additional_data": False,
             "number_forward_passes": 1, "dataset": ckpt["identity"]["dataset"], "venue": "",
             "architecture": f"{timm_name(ckpt['model_args']['name'])} (width {ckpt['model_args'].get('width', 1.0)})",
             "eps": f"{cfg['eps']:g}/255", "clean_acc": None, "reported": None, "autoattack_acc": None,
             "footnote": "", "unreliable": False}
    fastsat = {"method": cfg["method"], "epochs": cfg["epochs"], "seed": cfg["seed"], "training_eps": f"{cfg['eps']:g}/255"}
    if not report_path.is_file():
        entry["footnote"] = "not evaluated: no robustness.json beside the checkpoint"
        return {**entry, "fastsat": {**fastsat, "evaluation": "missing"}}
    report = read_json(report_path)
    if not isinstance(report, dict) or not {"attacks", "clean", "settings", "n", "data"} <= set(report):
        raise InputError(f"{report_path}: a damaged report (attacks, clean, settings, n and data expected)")
    eps = eps_key(cfg["eps"])
    rows = report["attacks"]
    aa = report["settings"].get("autoattack", {})
    entry["clean_acc"] = f"{report['clean']:.2f}"
    if "autoattack" in rows and eps in rows["autoattack"]:
        entry["autoattack_acc"] = entry["reported"] = f"{rows['autoattack'][eps]:.2f}"
        entry["footnote"] = (f"AutoAttack {aa.get('version')} by {aa.get('implementation')}, {aa.get('steps')} "
                             f"iterations, n = {report['n']} {report['data']['dataset']}/{report['data']['split']}"
                             + ("; cascade: after the attacks run before it" if report["settings"].get("cascade") else ""))
    else:
        entry["footnote"] = f"AutoAttack was not run at ε = {eps}/255"
    entry["unreliable"] = bool(report.get("masked"))
    fastsat.update(n=report["n"], worst_case=rows.get("worst_case", {}), masked=report.get("masked", False),
                   failed_checks=report.get("failed_checks", []), stochastic=report.get("stochastic", False),
                   autoattack=aa, evaluation="done")
    if summary_path.is_file():
        summary = read_json(summary_path)
        fastsat.update(train_seconds=summary["train_seconds"], images_per_s=summary["images_per_s"])
    return {**entry, "fastsat": fastsat}


def _yaml(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON scalar is a YAML scalar


def model_card(entry: dict, recipe: dict) -> str:
    """README.md for the Hugging Face Hub: ``model-index`` metadata (what the Hub reads results from),
    the verdict with its masking flags, the training recipe and the one line that loads it."""
    f = entry["fastsat"]
    unreliable = " (unreliable: a gradient-masking check failed)" if entry["unreliable"] else ""
    metrics = []
    if f["evaluation"] == "done":
        metrics.append(("clean accuracy", entry["clean_acc"]))
        if entry["autoattack_acc"] is not None:
            metrics.append((f"AutoAttack accuracy (Linf, eps {entry['eps']}){unreliable}", entry["autoattack_acc"]))
        metrics += [(f"worst-case accuracy over every attack run (Linf, eps {e}/255){unreliable}", f"{v:.2f}")
                    for e, v in f["worst_case"].items()]
    lines = ["---", "library_name: timm", "license: mit", "tags: [image-classification, timm, adversarial-robustness, "
             "fastsat]", f"datasets: [{_yaml(entry['dataset'])}]", "model-index:", f"- name: {_yaml(entry['name'])}",
             "  results:", "  - task: {type: image-classification, name: Image Classification}",
             f"    dataset: {{type: {_yaml(entry['dataset'])}, name: {_yaml(entry['dataset'])}, split: test}}",
             "    metrics:"]
    lines += [f"    - {{type: accuracy, name: {_yaml(name)}, value: {float(v)}, verified: false}}" for name, v in metrics]
    if not metrics:
        lines[-1] = "    metrics: []"
    lines += ["---", "", f"# {entry['name']}", ""]
    if entry["unreliable"]:
        lines += [f"**Unreliable verdict: the model failed the gradient-masking checks "
                  f"{', '.join(f['failed_checks'])}; its robust accuracies are not a verdict.**", ""]
    if f["evaluation"] == "done":
        lines += [f"Graded on n = {f['n']} test images: clean {entry['clean_acc']}%, AutoAttack at {entry['eps']}: "
                  f"{entry['autoattack_acc'] or 'not run'} ({entry['footnote']}); worst case per ε: "
                  + ", ".join(f"{e}/255 {v:.1f}%" for e, v in f["worst_case"].items()) + ".", ""]
    else:
        lines += ["Not evaluated: the run had no verdict when it was exported.", ""]
    lines += ["Training recipe: " + ", ".join(f"{k} {v}" for k, v in recipe.items()) + ".", "",
              "Load it (fastsat's registration of the architecture is the only fastsat import):", "", "```python",
              "import timm, fastsat.models", f"model = timm.create_model(\"hf-hub:<user>/{entry['name']}\", "
              "pretrained=True)  # or \"local-dir:<this folder>\"",
              "data = timm.data.resolve_data_config(model=model)  # input size, mean and std of the training data",
              "```", ""]
    return "\n".join(lines)


def _save(save_file, state: dict, meta: dict, tmp: Path) -> None:
    """safetensors' write, its I/O errors (a full disk: its own error type) one line."""
    try:
        save_file(state, str(tmp), metadata=meta)
    except Exception as e:  # noqa: BLE001 - SafetensorError, which is not an OSError
        if "I/O error" not in str(e):
            raise
        raise InputError(f"could not write {tmp.parent / 'model.safetensors'}: {str(e).splitlines()[0]} (a full "
                         f"disk?)") from None


def export(checkpoint: Path, out: Path, overwrite: bool = False) -> str:
    from safetensors.torch import save_file

    from .models import DATA_CONFIG_KEY
    from .runs import load_checkpoint

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} exists and is not empty (--overwrite replaces its files)")
    ckpt = load_checkpoint(checkpoint, "cpu")
    net = ckpt["model"][1]
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    cfg, entry = timm_config(ckpt), robustbench_entry(ckpt, Path(checkpoint).parent, out.name)
    run_cfg = upgrade(ckpt["config"])
    recipe = {k: run_cfg[k] for k in ("method", "model", "width", "epochs", "batch_size", "optimizer", "lr",
                                      "lr_schedule", "weight_decay", "eps", "seed")}
    recipe["eps"] = f"{recipe['eps']:g}/255"
    meta = {"format": "pt", DATA_CONFIG_KEY: json.dumps(cfg["pretrained_cfg"])}
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "model.safetensors", partial(_save, save_file, state, meta))
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=1))
        atomic_write_text(out / "robustbench.json", json.dumps(entry, indent=1))
        atomic_write_text(out / "README.md", model_card(entry, recipe))
    except BaseException:
        if created:  # no half export: the folder this call made goes
            shutil.rmtree(out, ignore_errors=True)
        raise
    return f"wrote {out}/model.safetensors, config.json, robustbench.json, README.md (model card)"


def parser() -> ArgumentParser:

    ap = ArgumentParser(prog="python -m fastsat.export", description=__doc__.split("\n\n")[0],
                        epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", type=Path, required=True, help="best.pt or checkpoint.pt of a fastsat run")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    ap.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out")
    return ap


def main(argv=None) -> int:
    def body():
        args = parser().parse_args(argv)
        return export(args.checkpoint, args.out, args.overwrite)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
