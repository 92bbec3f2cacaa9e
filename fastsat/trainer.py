"""A training run in readable steps: set-up, one epoch, model selection, checkpoint, final report.

``train(cfg)`` is what ``python -m fastsat.train`` and ``fastsat.compare`` call. Every check
(flags, betons, output folder, batch size) runs in :func:`setup` before anything is written.
Model selection uses a held-out, class-stratified part of the *training* beton (Rice et al.
2020): every epoch, clean and PGD accuracy on it go to ``metrics.jsonl``; ``best.pt`` keeps the
epoch with the highest holdout PGD accuracy (clean accuracy for standard and noise training, see
:func:`criterion`) among epochs whose holdout clean accuracy is at least ``select_min_clean`` of the
best seen (:func:`better`), and the final report evaluates it on the test beton (``--select last``: the
last epoch). A fall of holdout PGD accuracy by more than ``co_drop``
points in one epoch is flagged as catastrophic overfitting (Wong et al. 2020).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .attacks import PGD
from .beton import BetonInfo, content_id, open_beton
from .config import TrainConfig
from .batch import step_seed
from .data import make_batches
from .errors import WRITE_ERRNOS, InputError
from .files import Claim, atomic_write_text
from .methods import METHODS, p_random, train_step
from .models import build_model
from .pruning import apply_masks, magnitude_masks, measured_sparsity
from .robustness import correct_under, eval_data, grade_beton, sample_indices
from .runfiles import RunFiles
from .runs import (Run, RunFolder, load_checkpoint, load_weights, other_data, pick_device,
                   rank_world, read_history, recover, resume_state, save_epoch, write_config)
from .subsets import holdout_split

def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """The whole run; returns its summary (wall time, images/s, robustness of the selected model).
    One process writes a run folder at a time: the writing rank holds ``files.Claim`` on it (an
    advisory lock beside the folder, dropped when the process ends), and a second one is refused."""
    out = Path(cfg.out)
    if rank_world()[0] > 0 or not out.parent.is_dir():  # only rank 0 writes; a new parent: nobody else there
        return _train(cfg, progress)
    with Claim(out) as mine:
        if not mine:
            raise InputError(f"{out} is being written by another process (it holds .{out.name}.lock): one run "
                             f"per folder at a time")
        try:
            return _train(cfg, progress)
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            raise InputError(f"could not write {e.filename or out}: {e.strerror} (full disk or read-only folder?); "
                             f"no checkpoint was written by this command") from None



def _train(cfg: TrainConfig, progress: bool) -> dict:
    run = setup(cfg, progress)
    try:
        history = read_history(run)
        stats = dict(run.state.get("stats", {})) if run.state else {"train_seconds": 0.0, "images": 0}
        best = dict(run.state.get("best", {})) if run.state else {}
        for epoch in range(run.state["epoch"] if run.state else 0, cfg.epochs):
            line = train_epoch(run, epoch)
            stats["train_seconds"] += line["epoch_seconds"]
            stats["images"] += line["images"]
            holdout_scores(run, line)  # every rank grades its share of the holdout
            if run.rank == 0:
                select(run, line, history, best)
                save_epoch(run, epoch, line, stats, best)
                history.append(line)
                if run.folder is not None:
                    run.folder.commit()  # the new run has a checkpoint: a replaced old one may go
                _log(run, line)
    except BaseException:
        if run.folder is not None and run.rank == 0:
            run.folder.restore()  # no checkpoint yet: the replaced run comes back
        raise
    if run.world > 1:
        torch.distributed.barrier()  # rank 0's last checkpoint is on disk
    return final_report(run, stats, best)  # every rank grades its share; rank 0 writes


def setup(cfg: TrainConfig, progress: bool = True) -> Run:
    """Everything checked and built; nothing written yet (the output folder is claimed last)."""
    rank, world = rank_world()
    device = _device(cfg, world)
    info, val_info = open_beton(cfg.train, verify=cfg.verify), open_beton(cfg.val, verify=cfg.verify)
    if (val_info.num_classes, val_info.image_shape) != (info.num_classes, info.image_shape):
        raise InputError(f"{cfg.val} ({val_info.num_classes} classes, {val_info.image_shape}) does not match "
                         f"{cfg.train} ({info.num_classes} classes, {info.image_shape})")
    other_data(val_info, info.manifest["dataset"], info.image_shape, cfg.allow_other_data)
    if cfg.pad >= min(info.image_shape[:2]):
        raise InputError(f"--pad {cfg.pad} must be below the image side ({min(info.image_shape[:2])} pixels)")
    fields = _saliency_fields(cfg, info)
    identity = {"dataset": info.manifest["dataset"], "content": content_id(info.manifest)}
    train_idx, hold_idx = holdout_split(info.labels, cfg.holdout, cfg.seed)
    if len(train_idx) // world < cfg.batch_size:
        raise InputError(f"--batch-size {cfg.batch_size} is larger than the {len(train_idx) // world} training samples "
                         f"per process (after the holdout): an epoch would have no step")
    out = Path(cfg.out)
    folder, state = None, None
    if rank == 0:
        recover(out)  # a replaced run that a killed process left aside
    if cfg.resume:
        state = resume_state(cfg, out, identity)
    elif rank == 0:  # the only process that writes
        folder = RunFolder(out, cfg.overwrite)
        folder.check([cfg.train, cfg.val, cfg.init])
    model, optimizer, scaler = build(cfg, info, device)
    run = Run(cfg=cfg, device=device, rank=rank, world=world, info=info, val_info=val_info, fields=fields,
              identity=identity, train_idx=train_idx, model=model, optimizer=optimizer, scaler=scaler, state=state,
              folder=folder, out=out, progress=progress,
              holdout=eval_data(info, sample_indices(info.labels, cfg.select_limit, cfg.seed, hold_idx), device))
    load_weights(run)
    run.masks = magnitude_masks(model, cfg.sparsity) if cfg.sparsity else []
    run.net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    run.batches = make_batches(info, fields, batch_size=cfg.batch_size, workers=cfg.workers, device=device, train=True,
                               seed=cfg.seed, resident=cfg.gpu_resident, distributed=world > 1, indices=train_idx,
                               rank=rank)
    if rank == 0:
        try:
            write_config(run, hold_idx)
        except BaseException:
            if folder is not None:
                folder.restore()  # nothing of this run stays; a replaced run comes back
            raise
    return run


def _device(cfg: TrainConfig, world: int) -> torch.device:
    device = pick_device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _saliency_fields(cfg: TrainConfig, info: BetonInfo) -> list:
    """The map fields the method reads (two: mixed per sample by the loader)."""
    if not METHODS.get(cfg.method).needs_saliency:
        return []
    fields = [cfg.sal_field] + (["sal2"] if cfg.sal_mix else [])
    if len({info.granularity(f) for f in fields}) > 1:  # raises if the beton lacks a field
        raise InputError(f"{cfg.train}: sal and sal2 have different granularities; they cannot be mixed")
    return fields


def build(cfg: TrainConfig, info: BetonInfo, device):
    """Model (Normalize ∘ timm ResNet, mean/std from the manifest), optimizer, AMP scaler."""
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model, info.num_classes, info.manifest["mean"], info.manifest["std"], cfg.width)
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


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` ∈ [0, 1) of the run (per step): constant (the paper's Adam),
    cosine, ×0.1 at 50% and 75%, or one-cycle (0 → lr over ``warmup``, then back to 0)."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "step":
        return cfg.lr * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if cfg.lr_schedule == "onecycle":
        return cfg.lr * (progress / cfg.warmup if progress < cfg.warmup else (1 - progress) / (1 - cfg.warmup))
    return cfg.lr


def train_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training part; its metrics line (loss, accuracy, time, images/s)."""
    from tqdm import tqdm

    cfg, device = run.cfg, run.device
    steps = len(run.batches)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first step whose loss is not finite
    seen, p_sum = 0, 0.0
    t0 = time.perf_counter()
    batches = tqdm(run.batches.epoch(epoch), total=len(run.batches), desc=f"epoch {epoch}",
                   disable=not run.progress or run.rank != 0, leave=False)
    for step, batch in enumerate(batches):
        p = p_random(cfg, epoch, step, steps)
        p_sum += p
        lr = lr_at(cfg, (epoch * steps + step) / (cfg.epochs * steps))
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, ok = train_step(cfg, run.net, run.optimizer, batch, p_random=p,
                              seed=step_seed(cfg.seed, run.rank, epoch, step), scaler=run.scaler)
        apply_masks(run.masks)  # pruned weights stay zero
        loss_sum += loss * len(batch.y)
        correct += ok
        seen += len(batch.y)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)  # no sync
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if first_bad.item() >= 0:
        kept = f"{RunFiles.CHECKPOINT} and {RunFiles.BEST} keep epoch {epoch - 1}" if epoch else "no checkpoint was written"
        raise InputError(f"epoch {epoch}, step {first_bad.item()}: the training loss is not finite (learning rate "
                         f"or another setting too large?); training stopped, {kept}")
    line = {"epoch": epoch, "lr": lr, "loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen,
            "epoch_seconds": seconds, "images": seen * run.world, "images_per_s": seen * run.world / seconds,
            "p_random": p_sum / max(len(run.batches), 1)}  # the mean P(random) of Eq. 9 this epoch used
    if run.masks:
        line["sparsity"] = measured_sparsity(run.model)
    if run.world > 1:
        line["ranks_agree"] = _ranks_agree(run.model)
    return line


def criterion(cfg: TrainConfig) -> str:
    """The holdout accuracy that picks the best epoch: ``robust`` (PGD) or ``clean``. Robust accuracy
    selects adversarial methods (Rice et al.); for standard and noise training it is ≈ 0 at every
    epoch and would pick noise, so they select on clean accuracy (each method's registry entry)."""
    return METHODS.get(cfg.method).selection if cfg.select in ("auto", "last") else cfg.select


def holdout_scores(run: Run, line: dict) -> None:
    """Holdout clean and PGD accuracy into ``line`` (under a process group, sharded over the ranks)."""
    cfg = run.cfg
    pgd = PGD(cfg.fraction("eps"), cfg.fraction("eps") / 4, cfg.select_steps)
    line["holdout_clean"] = 100.0 * correct_under(run.model, run.holdout).float().mean().item()
    line["holdout_pgd"] = 100.0 * correct_under(run.model, run.holdout, pgd, seed=cfg.seed).float().mean().item()


def select(run: Run, line: dict, history: list, best: dict) -> None:
    """``best`` updated from the epoch's holdout scores; catastrophic overfitting flagged."""
    cfg = run.cfg
    previous = history[-1]["holdout_pgd"] if history else None
    if collapsed(previous, line["holdout_pgd"], cfg.co_drop):
        line["catastrophic_overfitting"] = True
        print(f"warning: epoch {line['epoch']}: holdout PGD accuracy fell from {previous:.1f}% to "
              f"{line['holdout_pgd']:.1f}% — catastrophic overfitting (Wong et al. 2020); best.pt keeps "
              f"epoch {best.get('epoch')}", file=sys.stderr)
    key = "holdout_pgd" if criterion(cfg) == "robust" else "holdout_clean"
    floor = cfg.select_min_clean * max(m["holdout_clean"] for m in [*history, line])
    if line["holdout_clean"] < floor:
        line["below_clean_floor"] = True
    line["best"] = better(line, best, key, floor)
    if line["best"]:
        best.update(epoch=line["epoch"], by=key, score=line[key], clean=line["holdout_clean"])


def better(line: dict, best: dict, key: str, floor: float) -> bool:
    """Whether this epoch replaces ``best``: it scores higher on ``key`` (ties: the earlier epoch), and
    neither it nor a best it replaces sits below the clean-accuracy ``floor`` — a collapsed epoch (near
    chance clean, a few points of robust accuracy that are only abstention) is never kept over a
    working model, and a best left below the floor by later epochs is replaced by the next one above."""
    if line["holdout_clean"] < floor:
        return False
    return not best or best.get("clean", floor) < floor or line[key] > best["score"]


def collapsed(previous: Optional[float], now: float, drop: float) -> bool:
    """The catastrophic-overfitting signature: holdout PGD accuracy falls by more than ``drop``
    points from one epoch to the next (Wong et al. 2020 watch a training batch the same way)."""
    return previous is not None and previous - now > drop


def _log(run: Run, line: dict) -> None:
    if run.progress:
        print(f"epoch {line['epoch']}: loss {line['loss']:.4f}, train {line['train_acc']:.1f}%, holdout clean "
              f"{line['holdout_clean']:.1f}% / PGD {line['holdout_pgd']:.1f}%{' (best)' if line['best'] else ''}, "
              f"{line['epoch_seconds']:.1f} s, {line['images_per_s']:.0f} img/s", file=sys.stderr)


def final_report(run: Run, stats: dict, best: dict) -> dict:
    """The selected checkpoint (best or last) evaluated on the test beton; summary.json."""
    cfg = run.cfg
    which = RunFiles(run.out).selected(last=cfg.select == "last")
    ckpt = load_checkpoint(which, run.device)
    selected = {"checkpoint": which.name, "epoch": ckpt["epoch"] - 1,
                "by": f"holdout {criterion(cfg)} accuracy" if which.name == RunFiles.BEST else "last epoch"}
    other = other_data(run.val_info, run.info.manifest["dataset"], run.info.image_shape, allowed=True)
    report, table = grade_beton(ckpt["model"], run.val_info, cfg, run.device, run.out,
                                f"{cfg.method}, {cfg.model} (width {cfg.width}), {run.info.manifest['dataset']}",
                                run.progress, {"selected": selected, **({"other_data": "; ".join(other)} if other else {})})
    summary = {"method": cfg.method, "seed": cfg.seed, "masked": report["masked"],
               "train_seconds": stats["train_seconds"],
               "images_per_s": stats["images"] / stats["train_seconds"], "selected": report["selected"],
               "sparsity": measured_sparsity(run.model), "robustness": report}
    if run.rank == 0:
        atomic_write_text(RunFiles(run.out).summary, json.dumps(summary, indent=1))
    return {**summary, "table": table}


def _ranks_agree(model) -> bool:
    """All ranks hold the same weights (DDP keeps them in step; this checks it, every epoch)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    total = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device) % 9973).sum()])
    gathered = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)
