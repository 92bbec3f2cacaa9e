"""A run's state outside the training loop: the :class:`Run`, its checkpoints (saved each epoch,
resumed, read back), ``config.json`` and ``metrics.jsonl``, the device, and the output-folder rules.
``trainer.py`` is the loop that uses them.

Checkpoints store the model's own arguments (``model_args``, nanoGPT-style), so evaluation and
teacher saliency rebuild the model without a training config. The output folder of a run:

* new: created; an existing non-empty folder is refused unless ``--resume`` or ``--overwrite``;
* ``--overwrite`` replaces only a folder that is recognisably a fastsat run (its ``config.json``
  says so) and holds none of the run's inputs; the old run is moved aside when the new one starts
  writing and deleted only once the new one has saved its first checkpoint — any failure before
  that puts it back (a killed process's leftovers are sorted out by the next run on that folder);
* ``--resume``: see :func:`resume_state` (same data, same training settings, or ``--allow-change``).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .beton import BetonInfo, content_id
from .config import RUN_KIND, TrainConfig, differing, provenance, saved_config, upgrade
from .errors import InputError
from .files import atomic_write, atomic_write_text, pid_alive
from .methods import METHODS
from .models import build_model
from .runfiles import RunFiles, read_json
from .subsets import per_class

if TYPE_CHECKING:
    from .robustness import EvalData



def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name} asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name} asked for, but MPS is not available")
    return device


def other_data(info, dataset: str, image_shape, allowed: bool) -> list[str]:
    """How a test beton differs from the data a model was trained on (dataset, image shape); refused
    in one line unless ``allowed`` (then the report says so). An empty beton is always refused."""
    if not info.num_samples:
        raise InputError(f"{info.path} has no samples to evaluate")
    other = []
    if info.manifest["dataset"] != dataset:
        other.append(f"dataset {info.manifest['dataset']}, trained on {dataset}")
    if list(info.image_shape) != list(image_shape):
        other.append(f"images {info.image_shape}, trained on {tuple(image_shape)}")
    if other and not allowed:
        raise InputError(f"{info.path}: {'; '.join(other)} (--allow-other-data to grade on it anyway)")
    return other


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a reader (or a resume after kill -9) sees the old checkpoint or the new one. A
    failed write (full disk) leaves the old one and no temporary, and ends the run in one line."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as e:
        raise InputError(f"could not save {path}: {str(e).splitlines()[0]} (full disk?)") from None


def model_from_args(args: dict) -> torch.nn.Module:
    """Rebuild Normalize ∘ timm model from a checkpoint's ``model_args``."""
    return build_model(args["name"], args["num_classes"], args["mean"], args["std"], args.get("width", 1.0))


def read_checkpoint(path: Path, device="cpu") -> dict:
    """A checkpoint's data, never code: ``torch.load(weights_only=True)`` unpickles tensors, numbers,
    strings and containers only, so a file whose pickle would call anything is refused in one line
    (nothing of it runs)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "Unpickler error" in line] or str(e).splitlines()
        why = lines[0].split(" was not an allowed global")[0]
        raise InputError(f"{path}: refused — it holds more than data (objects a checkpoint never needs; "
                         f"loading it could run code): {why}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}) — truncated or damaged?") from None
    what = checkpoint_problem(ckpt)
    if what:
        raise InputError(f"{path}: not a fastsat checkpoint ({what})")
    return ckpt


def _numbers(v, positive: bool = False) -> bool:
    return isinstance(v, list) and 0 < len(v) <= 4 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
        for x in v)


def _count(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


CHECKPOINT_SCHEMA = {  # key → (what it must be, the check); every checkpoint fastsat writes has these
    "model_state": ("a dict of tensors", lambda v: isinstance(v, dict) and v
                    and all(isinstance(t, torch.Tensor) for t in v.values())),
    "config": ("a dict naming model, width and method", lambda v: isinstance(v, dict) and isinstance(
        v.get("model"), str) and isinstance(v.get("method"), str) and isinstance(v.get("width", 1.0), (int, float))),
    "identity": ("a dict naming the dataset", lambda v: isinstance(v, dict) and isinstance(v.get("dataset"), str)),
    "epoch": ("a count", _count),
    "model_args": ("name, num_classes, mean, std, image_shape [H, W, C] with C = len(mean), width > 0", lambda a: (
        isinstance(a, dict) and isinstance(a.get("name"), str) and _count(a.get("num_classes"), 1)
        and _numbers(a.get("mean")) and _numbers(a.get("std"), positive=True) and len(a["mean"]) == len(a["std"])
        and isinstance(a.get("image_shape"), list) and len(a["image_shape"]) == 3
        and all(_count(d, 1) for d in a["image_shape"]) and a["image_shape"][2] == len(a["mean"])
        and isinstance(a.get("width", 1.0), (int, float)) and 0 < a.get("width", 1.0) <= 16)),
}


def checkpoint_problem(ckpt) -> str:
    """The first thing a checkpoint lacks or holds wrongly (its schema), or ""."""
    if not isinstance(ckpt, dict):
        return f"a {type(ckpt).__name__}, not a dict"
    for key, (what, ok) in CHECKPOINT_SCHEMA.items():
        if key not in ckpt:
            return f"no {key}"
        if not ok(ckpt[key]):
            return f"{key} is not {what}"
    return ""


def first_line(e: Exception) -> str:
    """The first informative line of a third-party error (torch's state-dict errors put it second)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Error(s) in loading state_dict")]
    return ((useful or lines or [type(e).__name__])[0])[:200]


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint with its model rebuilt (``ckpt['model']``, eval mode), for evaluation or saliency."""
    ckpt = read_checkpoint(path, device)
    try:
        model = model_from_args(ckpt["model_args"])
    except Exception as e:  # noqa: BLE001 - an unknown architecture, any failure to build it
        raise InputError(f"{path}: its model_args build no model ({first_line(e)})") from None
    try:
        model.load_state_dict(ckpt["model_state"])
    except Exception as e:  # noqa: BLE001 - missing, unexpected or mis-shaped tensors
        raise InputError(f"{path}: its weights do not fit the {ckpt['model_args']['name']} its model_args build "
                         f"({first_line(e)})") from None
    ckpt["model"] = model.to(device).to(memory_format=torch.channels_last).eval()
    return ckpt


def _is_run(folder: Path) -> bool:
    """``config.json`` of a run (its kind says so)."""
    try:
        return json.loads(RunFiles(folder).config.read_text()).get("kind") == RUN_KIND
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@dataclass
class RunFolder:
    """``out`` for a new run (replacing an old one with ``overwrite``); see the module docstring."""
    out: Path
    overwrite: bool
    aside: Path | None = None  # where the old run waits while the new one has no checkpoint
    created: bool = False  # this run made the folder (removed again if it fails before a checkpoint)

    def check(self, inputs: list[str]) -> None:
        """Every rule, before any work: a non-run or an input inside ``out`` is never replaced."""
        recover(self.out)
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder")
        if not out.is_dir() or not any(out.iterdir()):
            return
        if not self.overwrite:
            raise InputError(f"{out} holds another run (use --resume to continue it or --overwrite to replace it)")
        if out.is_symlink():
            raise InputError(f"--overwrite: {out} is a symbolic link; name the run folder itself")
        if not _is_run(out):
            raise InputError(f"--overwrite: {out} is not a fastsat run (no config.json of one); not replacing it")
        for path in inputs:
            if path and _inside(Path(path), out):
                raise InputError(f"--overwrite: {out} holds {path}, an input of this run; not replacing it")
        if not RunFiles(out).only_run_files():
            raise InputError(f"--overwrite: {out} holds files no run writes; not replacing it")

    def claim(self) -> None:
        """Start writing: the old run (if any) is moved aside, a fresh folder created."""
        if self.out.is_dir() and any(self.out.iterdir()):
            self.aside = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
            os.replace(self.out, self.aside)
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        """The new run has a checkpoint: the old one goes, and this one stays whatever happens next."""
        self.created = False
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def restore(self) -> None:
        """The new run failed before its first checkpoint: put the old one back, or remove the
        folder this run created."""
        if self.aside is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.replace(self.aside, self.out)
            self.aside = None
        elif self.created:
            shutil.rmtree(self.out, ignore_errors=True)
            self.created = False


def recover(out: Path) -> None:
    """After a process was killed while the old run in ``out`` was set aside: restore that run,
    unless the new one got as far as a checkpoint (then the old one was meant to go)."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}.replaced-"
    for p in out.parent.iterdir():
        pid = p.name[len(prefix):]
        if p.name.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid)):
            if RunFiles(out).checkpoint.is_file():
                shutil.rmtree(p, ignore_errors=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
                os.replace(p, out)


@dataclass
class Run:
    """One training run: its settings, data, model and optimizer, and where it writes."""
    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    info: BetonInfo
    val_info: BetonInfo
    fields: list
    identity: dict
    train_idx: np.ndarray
    holdout: EvalData  # the holdout samples checked each epoch
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    state: Optional[dict]  # the checkpoint resumed from
    folder: Optional[RunFolder]  # None on resume
    out: Path
    masks: list = field(default_factory=list)
    net: Optional[torch.nn.Module] = None  # DDP wrapper or the model
    batches: object = None
    progress: bool = True


def model_args(cfg: TrainConfig, info: BetonInfo) -> dict:
    """What rebuilds the model with no training config (stored in every checkpoint)."""
    m = info.manifest
    return {"name": cfg.model, "width": cfg.width, "num_classes": m["num_classes"], "mean": m["mean"], "std": m["std"],
            "image_shape": m["image_shape"]}


def resume_state(cfg: TrainConfig, out: Path, identity: dict) -> dict:
    """The checkpoint to continue from, checked: same data, same settings (or --allow-change)."""
    if not RunFiles(out).checkpoint.is_file():
        raise InputError(f"--resume: no {RunFiles.CHECKPOINT} in {out}")
    state = read_checkpoint(RunFiles(out).checkpoint)
    if state["identity"] != identity:
        raise InputError(f"--resume: {cfg.train} is not the data the run in {out} was trained on")
    changed = differing(upgrade(state["config"]), cfg, roles=("run",))  # evaluation and bookkeeping may change
    run_long = cfg.sat_schedule == "run" and METHODS.get(cfg.method).needs_saliency  # Eq. 9 spans the run
    if cfg.lr_schedule == "none" and not run_long:  # nothing depends on the run's length:
        changed.pop("epochs", None)  # more epochs continue the same run
    if changed and not cfg.allow_change:
        raise InputError("--resume: " + ", ".join(f"{k} is {new!r} but the run in {out} used {was!r}"
                                                  for k, (was, new) in changed.items())
                         + " (--allow-change accepts and records it)")
    state["changed"] = changed
    return state


def load_weights(run: Run) -> None:
    cfg, state = run.cfg, run.state
    if state is not None:
        run.model.load_state_dict(state["model_state"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
    elif cfg.init:
        init = load_checkpoint(Path(cfg.init), run.device)
        try:
            run.model.load_state_dict(init["model"].state_dict())
        except RuntimeError:
            a = init["model_args"]
            raise InputError(f"--init {cfg.init}: its model ({a['name']}, width {a['width']}, {a['num_classes']} "
                             f"classes) does not match this run's") from None


def write_config(run: Run, hold_idx: np.ndarray) -> None:
    """config.json (a run's marker): the config, provenance, the holdout; on resume, the changes."""
    path = RunFiles(run.out).config
    if run.state is not None:
        saved = read_json(path)
        if run.state["changed"]:
            saved.setdefault("changes", []).append({"epoch": run.state["epoch"], "changed": {
                k: {"was": was, "now": now} for k, (was, now) in run.state["changed"].items()}})
            saved["config"] = saved_config(run.cfg)
        atomic_write_text(path, json.dumps(saved, indent=1))
        return
    run.folder.claim()
    holdout = {"n": len(hold_idx), "per_class": per_class(run.info.labels, hold_idx), "indices": hold_idx.tolist(),
               "checked_each_epoch": len(run.holdout.y)}
    data = {"train": content_id(run.info.manifest), "val": content_id(run.val_info.manifest)}
    atomic_write_text(path, json.dumps({"kind": RUN_KIND, "config": saved_config(run.cfg), "data": data,
                                        "holdout": holdout, **provenance()}, indent=1))
    RunFiles(run.out).metrics.unlink(missing_ok=True)


def metrics(out: Path) -> list[dict]:
    """A run folder's metrics.jsonl, one dict per epoch line."""
    path = RunFiles(out).metrics
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: unreadable or damaged ({(str(e).splitlines() or [''])[0]})") from None


def read_history(run: Run) -> list[dict]:
    """metrics.jsonl up to the checkpoint's epoch (lines of epochs it did not save are dropped)."""
    path = RunFiles(run.out).metrics
    if run.state is None or not path.is_file():
        return []
    kept = [m for m in metrics(run.out) if m["epoch"] < run.state["epoch"]]
    if run.rank == 0:
        atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in kept))
    return kept


def save_epoch(run: Run, epoch: int, line: dict, stats: dict, best: dict) -> None:
    """metrics.jsonl (and metrics.csv) first, then the checkpoint (a kill between them: the resume
    drops the line)."""
    with open(RunFiles(run.out).metrics, "a") as f:
        f.write(json.dumps(line) + "\n")
    if run.cfg.log_csv:
        write_csv(run.out)
    state = {"config": saved_config(run.cfg), "model_args": model_args(run.cfg, run.info),
             "identity": run.identity, "epoch": epoch + 1, "model_state": run.model.state_dict(),
             "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
             "rng": torch.get_rng_state(), "stats": stats, "best": best, **provenance()}
    if line["best"]:
        save_checkpoint(RunFiles(run.out).best, {k: state[k] for k in ("config", "model_args", "identity", "epoch",
                                                              "model_state", "best")})
    save_checkpoint(RunFiles(run.out).checkpoint, state)


def write_csv(out: Path) -> None:
    """metrics.csv from metrics.jsonl (every field of every epoch; a column per field)."""
    import csv
    import io

    lines = metrics(out)
    fields = list(dict.fromkeys(k for m in lines for k in m))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(lines)
    atomic_write_text(RunFiles(out).metrics_csv, buf.getvalue())
