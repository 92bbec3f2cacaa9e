"""python -m fastsat.train: betons → a robust timm ResNet, with every method of the paper.

    python -m fastsat.train --method sat --train data/digits_train.beton --val data/digits_test.beton \
        --model resnet10 --width 0.25 --epochs 10 --out runs/sat
    torchrun --nproc_per_node 2 -m fastsat.train ...   # DistributedDataParallel (nccl / gloo)

Writes OUT/config.json, OUT/metrics.jsonl (a line per epoch), OUT/checkpoint.pt (every epoch,
atomically; ``--resume`` continues from it exactly), then OUT/robustness.{json,md,png}.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .beton import open_beton
from .config import TrainConfig, load_config, provenance
from .kernels.sat import step_seed
from .methods import MethodConfig, mix_saliency, train_step
from .models import build_model
from .writers.common import InputError

CHECKPOINT = "checkpoint.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} asked for, but CUDA is not available")
    return device


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _set_lr(cfg: TrainConfig, optimizer, epoch: int) -> float:
    """The schedule: constant (the paper's Adam), cosine, or ×0.1 at 50% and 75% of the epochs."""
    if cfg.schedule == "cosine":
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    elif cfg.schedule == "step":
        lr = cfg.lr * (0.1 ** ((epoch >= cfg.epochs // 2) + (epoch >= 3 * cfg.epochs // 4)))
    else:
        lr = cfg.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def build(cfg: TrainConfig, info, device):
    """Model (Normalize ∘ timm ResNet, mean/std from the manifest), optimizer, AMP scaler."""
    torch.manual_seed(cfg.seed)
    m = info.manifest
    try:
        model = build_model(cfg.model, m["num_classes"], m["mean"], m["std"], cfg.width)
    except ValueError as e:
        raise InputError(str(e)) from None
    model = model.to(device).to(memory_format=torch.channels_last)
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                    weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    return model, optimizer, scaler


def prunable(model) -> list[torch.nn.Parameter]:
    """Weights that global magnitude pruning considers: every conv and linear weight."""
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def magnitude_masks(model, sparsity: float) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Global magnitude pruning: zero the smallest |w| across all prunable weights (DESIGN: the
    paper's 95%-sparse teacher). Returns (weight, keep-mask) pairs, already applied."""
    weights = prunable(model)
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = math.ceil(sparsity * scores.numel())
    if k == 0:
        return []
    cut = torch.kthvalue(scores.cpu(), k).values.item()
    masks = [(w, w.detach().abs() > cut) for w in weights]
    apply_masks(masks)
    return masks


def apply_masks(masks) -> None:
    with torch.no_grad():
        for w, keep in masks:
            w.mul_(keep)


def measured_sparsity(model) -> float:
    weights = prunable(model)
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint with its model rebuilt (``ckpt['model']``), for evaluation or saliency."""
    if not Path(path).is_file():
        raise InputError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        cfg = TrainConfig(**ckpt["config"])
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a fastsat checkpoint ({type(e).__name__}: {e})") from None
    model = build_model(cfg.model, ckpt["num_classes"], ckpt["mean"], ckpt["std"], cfg.width)
    model.load_state_dict(ckpt["model_state"])
    ckpt["model"] = model.to(device).to(memory_format=torch.channels_last).eval()
    return ckpt


def _prepare_out(cfg: TrainConfig, identity: dict) -> tuple[Path, dict | None]:
    """The output folder: new, replaced (--overwrite) or resumed (--resume, checked to match)."""
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if cfg.resume:
        if not ckpt_path.is_file():
            raise InputError(f"--resume: no {CHECKPOINT} in {out}")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        old = TrainConfig(**state["config"])
        for key in ("model", "width", "method", "train", "seed", "batch_size"):
            if getattr(old, key) != getattr(cfg, key):
                raise InputError(f"--resume: {key} is {getattr(cfg, key)!r} but the run in {out} used {getattr(old, key)!r}")
        if state["identity"] != identity:
            raise InputError(f"--resume: {cfg.train} is not the beton the run in {out} was trained on")
        return out, state
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise InputError(f"{out} holds another run (use --resume to continue it or --overwrite to replace it)")
        if _rank()[0] == 0:
            shutil.rmtree(out)
    return out, None


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """The whole run; returns its summary (wall time, images/s, robustness)."""
    from tqdm import tqdm

    from .data import make_batches
    from .evaluate import clean_accuracy, robustness, write_reports

    rank, world = _rank()
    distributed = world > 1
    device = pick_device(cfg.device)
    if distributed:
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    info = open_beton(cfg.train, verify=cfg.verify)
    val_info = open_beton(cfg.val, verify=cfg.verify)
    if val_info.num_classes != info.num_classes or val_info.image_shape != info.image_shape:
        raise InputError(f"{cfg.val} ({val_info.num_classes} classes, {val_info.image_shape}) does not match "
                         f"{cfg.train} ({info.num_classes} classes, {info.image_shape})")
    mcfg = MethodConfig.from_config(
        cfg, out_dtype=torch.float16 if cfg.amp and device.type == "cuda" else torch.float32)
    fields = []
    if mcfg.needs_saliency:
        fields = [cfg.sal_field] + (["sal2"] if cfg.sal_mix else [])
        for f in fields:
            mcfg.granularity = info.granularity(f)  # raises if the beton lacks the field
        if cfg.sal_mix and info.granularity("sal") != info.granularity("sal2"):
            raise InputError(f"{cfg.train}: sal and sal2 have different granularities; they cannot be mixed")
    identity = {"dataset": info.manifest["dataset"], "blake2b": info.manifest["blake2b"]}
    out, state = _prepare_out(cfg, identity)

    model, optimizer, scaler = build(cfg, info, device)
    if cfg.init and state is None:
        init = load_checkpoint(Path(cfg.init), device)
        try:
            model.load_state_dict(init["model"].state_dict())
        except RuntimeError:
            raise InputError(f"--init {cfg.init}: its model ({init['config']['model']}, width "
                             f"{init['config']['width']}, {init['num_classes']} classes) does not match this run's") from None
    start = 0
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]
    masks = magnitude_masks(model, cfg.sparsity) if cfg.sparsity else []
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_batches = make_batches(info, fields, batch_size=cfg.batch_size, workers=cfg.workers, device=device,
                                 train=True, seed=cfg.seed, resident=cfg.gpu_resident, distributed=distributed)
    val_batches = make_batches(val_info, ["sal"] if "sal" in val_info.saliency else [], batch_size=cfg.batch_size,
                               workers=cfg.workers, device=device, train=False, seed=cfg.seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), **provenance()}, indent=1))
    if state is None and rank == 0:
        (out / "metrics.jsonl").unlink(missing_ok=True)

    mix_gen = torch.Generator(device=device)
    train_seconds = sum(json.loads(line)["epoch_seconds"] for line in
                        (out / "metrics.jsonl").read_text().splitlines()) if state is not None else 0.0
    images = 0
    for epoch in range(start, cfg.epochs):
        lr = _set_lr(cfg, optimizer, epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        batches = tqdm(train_batches.epoch(epoch), total=len(train_batches), desc=f"epoch {epoch}",
                       disable=not progress or rank != 0, leave=False)
        for step, (x, y, sal, sal2) in enumerate(batches):
            seed = step_seed(cfg.seed * 65537 + rank, epoch, step)
            if cfg.sal_mix:
                sal = mix_saliency(sal, sal2, mix_gen.manual_seed(seed))
            loss, ok = train_step(mcfg, net, optimizer, x, y, sal, epoch=epoch, seed=seed, scaler=scaler)
            apply_masks(masks)  # pruned weights stay zero
            loss_sum += loss * len(y)
            correct += ok
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images += seen
        line = {"epoch": epoch, "lr": lr, "loss": loss_sum.item() / max(seen, 1),
                "train_acc": 100.0 * correct.item() / max(seen, 1), "epoch_seconds": seconds,
                "images_per_s": seen * world / seconds, "p_random": cfg.sat_alpha ** epoch}
        if masks:
            line["sparsity"] = measured_sparsity(model)
        if distributed:
            line["ranks_agree"] = _ranks_agree(model)
        if rank == 0:
            line["val_acc"] = clean_accuracy(model, val_batches, limit=cfg.eval_limit)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            _atomic_save({"config": dataclasses.asdict(cfg), "identity": identity, "epoch": epoch + 1,
                          "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict() if scaler is not None else None,
                          "rng": torch.get_rng_state(), "num_classes": info.num_classes,
                          "mean": info.manifest["mean"], "std": info.manifest["std"], **provenance()},
                         out / CHECKPOINT)
            if progress:
                print(f"epoch {epoch}: loss {line['loss']:.4f}, train {line['train_acc']:.1f}%, "
                      f"val {line['val_acc']:.1f}%, {seconds:.1f} s, {line['images_per_s']:.0f} img/s",
                      file=sys.stderr)
    summary = {"method": cfg.method, "train_seconds": train_seconds,
               "images_per_s": images * world / train_seconds if images else None,
               "sparsity": measured_sparsity(model)}
    if rank == 0:
        granularity = val_info.granularity() if "sal" in val_info.saliency else None
        summary["robustness"] = robustness(model, val_batches, cfg, granularity, progress=progress)
        title = f"{cfg.method}, {cfg.model} (width {cfg.width}), {info.manifest['dataset']}"
        summary["table"] = write_reports(summary["robustness"], out, title)
        (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
    if distributed:
        torch.distributed.barrier()
    return summary


def _ranks_agree(model) -> bool:
    """All ranks hold the same weights (DDP keeps them in step; this checks it, every epoch)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    total = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device) % 9973).sum()])
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def main(argv=None) -> int:
    try:
        cfg = load_config(argv, description=__doc__.splitlines()[0])
        summary = train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "table" in summary:
        print(summary["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
