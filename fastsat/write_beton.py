"""python -m fastsat.write_beton: a dataset's official layout → X.beton + X.beton.json.

    python -m fastsat.write_beton --dataset digits --split train --out data/digits_train.beton
    python -m fastsat.write_beton --dataset tiny-imagenet --root ~/data --split val --out val.beton
    python -m fastsat.write_beton --dataset cifar10 --root ~/data --out c10.beton \\
        --saliency gbp --teacher runs/teacher/checkpoint.pt --saliency2 gradcam_pp_box

Weak saliency (Eq. 10: ``bbox``, ``mask``) comes from the layout; teacher saliency is computed in
batches in this process, on ``--device``, before FFCV's forking writer starts. Two maps of
different granularity are both stored per element, so a per-sample coin can pick either (Table 7).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .beton import WRITERS, SaliencyMap, file_hash, weak_map, write_beton
from .errors import ArgumentParser, InputError, run_cli
from .kernels import bits as bitlayout
from .runs import load_checkpoint, pick_device
from .saliency import SALIENCY, compute
from .writers import LAYOUTS, OPTIONS, WEAK_KINDS, open_writer

def parser() -> ArgumentParser:

    ap = ArgumentParser(prog="python -m fastsat.write_beton", description=__doc__.splitlines()[0],
                        epilog="datasets: " + LAYOUTS.help() + ".\n\nteacher saliency methods: " + SALIENCY.help()
                        + ".")
    ap.add_argument("--dataset", required=True, choices=list(LAYOUTS), help="layout to read (see below)")
    ap.add_argument("--split", default="train", choices=sorted({s for lay in LAYOUTS.values() for s in lay.splits}),
                    help="split to write: " + "; ".join(f"{n}: {', '.join(lay.splits)}" for n, lay in LAYOUTS.items()))
    ap.add_argument("--out", type=Path, required=True, help="output .beton path (manifest goes to OUT.json)")
    ap.add_argument("--saliency", default="auto", metavar="METHOD",
                    help="none | auto (the layout's weak map) | bbox | mask | a teacher method (needs --teacher)")
    ap.add_argument("--teacher", type=Path, help="checkpoint of fastsat.train for teacher saliency")
    ap.add_argument("--saliency2", metavar="METHOD", help="a second map, field sal2 (teacher method or weak map)")
    ap.add_argument("--teacher2", type=Path, help="teacher of --saliency2 (default: --teacher)")
    ap.add_argument("--sal-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of a teacher --saliency, repeatable: " + "; ".join(
                        f"{n}: {', '.join(f'{k}={p.default}' for k, p in e.params.items())}"
                        for n, e in SALIENCY.items() if e.params))
    ap.add_argument("--sal2-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of a teacher --saliency2; repeatable")
    ap.add_argument("--sal-batch", type=int, default=256, help="teacher batch size")
    ap.add_argument("--device", default="auto", help="device for teacher saliency: auto, cpu, cuda, cuda:N")
    for name, text in OPTIONS.items():
        kind = {"root": Path, "mask_root": Path, "side": int, "fold": int}.get(name, str)
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                        help=text + " (default: the layout's)",
                        **({"choices": ("skip", "keep")} if name == "missing_mask" else {}))
    ap.add_argument("--writer", choices=WRITERS, default="auto",
                    help="ffcv (parallel DatasetWriter), direct (one process, no ffcv needed; same content) "
                         "or auto (ffcv where installed)")
    ap.add_argument("--workers", type=int, default=-1, help="ffcv writer processes (-1: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap


def summary(info, verb: str = "Wrote") -> str:
    m = info.manifest
    h, w, c = m["image_shape"]
    sal = ", ".join(f"{name}: {v['nbytes']} B ({v['granularity']}, {v['source'].get('method')})"
                    for name, v in m["saliency"].items()) or "no saliency"
    notes = (" " + " ".join(m["notes"])) if m["notes"] else ""
    return (f"{verb} {info.path}: {m['num_samples']} samples of {m['dataset']}/{m['split']}, "
            f"{m['num_classes']} classes, images {h}x{w}x{c} ({h * w * c} B per sample, raw), {sal}; "
            f"file {m['file_size'] / 1e6:.1f} MB ({m['file_size'] / m['num_samples']:.0f} B per sample); "
            f"manifest {info.path}.json.{notes}")


def _params(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _gather(samples):
    """All images, labels and weak masks in memory (teacher maps need the images in order)."""
    if hasattr(samples, "images"):
        return samples.images, samples.labels, getattr(samples, "masks", None)
    images, labels, masks = [], [], []
    for i in range(len(samples)):
        image, label, positive, *_ = samples[i]
        images.append(image)
        labels.append(label)
        masks.append(positive)
    return np.stack(images), np.asarray(labels), None if masks[0] is None else np.stack(masks)


def _load_teacher(ckpt_path, source, device) -> dict:
    if ckpt_path is None:
        raise InputError("a teacher saliency method needs --teacher CKPT (a checkpoint of fastsat.train)")
    ckpt = load_checkpoint(ckpt_path, device)
    classes = ckpt["model_args"]["num_classes"]
    if classes != len(source.class_names):
        raise InputError(f"teacher {ckpt_path} has {classes} classes but {source.dataset} has {len(source.class_names)}")
    if ckpt["identity"]["dataset"] != source.dataset:
        raise InputError(f"teacher {ckpt_path} was trained on {ckpt['identity']['dataset']}, not {source.dataset}")
    return ckpt


def _plan(dataset: str, layout, source, requests) -> list[tuple[str, Path | None, dict]]:
    """(method, teacher, resolved params) per requested map — ``requests`` holds (method, teacher,
    params, params' flag) for ``sal`` then ``sal2`` — every choice checked before any work."""
    weak = ("none", *layout.weak)
    requests = [(source.saliency if m == "auto" else m, t, p, f) for m, t, p, f in requests if m is not None]
    if requests[0][0] == "none" and len(requests) > 1:
        raise InputError("--saliency2 needs a first saliency map")
    plan = []
    for method, teacher, params, flag in requests:
        if method not in weak and method not in SALIENCY:
            raise InputError(f"{dataset} has no {method!r} saliency (weak: {', '.join(weak)}; "
                             f"teacher: {', '.join(SALIENCY)})")
        if method in SALIENCY:
            needs = SALIENCY.get(method).needs_teacher
            if needs and teacher is None:
                raise InputError(f"--saliency {method} needs --teacher CKPT (a checkpoint of fastsat.train)")
            plan.append((method, Path(teacher) if needs else None, SALIENCY.get(method).resolve(params or {})))
        elif params:
            raise InputError(f"{flag} applies to teacher saliency methods, not to {method!r}")
        else:
            plan.append((method, None, {}))
    return plan


def _check_output(out: Path, overwrite: bool, sal_batch: int, workers: int, options: dict) -> None:
    """Everything about the request that can fail, before minutes of reading or saliency."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"unknown layout options {unknown} (known: {', '.join(OPTIONS)})")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (use --overwrite to replace it)")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; name the .beton file to write")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    if sal_batch < 1:
        raise InputError(f"--sal-batch must be >= 1, got {sal_batch}")
    if workers != -1 and not 1 <= workers <= (os.cpu_count() or 1):
        raise InputError(f"--workers must be -1 (all cores) or in [1, {os.cpu_count() or 1}], got {workers}")


def write_dataset(dataset: str, split: str, out, *, saliency: str = "auto", teacher=None, params: dict | None = None,
                  saliency2: str | None = None, teacher2=None, params2: dict | None = None, sal_batch: int = 256,
                  device: str = "auto", writer: str = "auto", workers: int = -1, overwrite: bool = False,
                  progress: bool = True, **options):
    """Write ``split`` of ``dataset``'s official layout to the beton ``out`` (and its manifest) with
    the requested maps — what ``python -m fastsat.write_beton`` does, each keyword its flag
    (``options``: the layout's ``root``, ``side``, ``fold``, ``missing_mask``, ``mask_root``).
    Returns the written beton's ``BetonInfo``; bad requests raise ``InputError`` before any work."""
    out, layout = Path(out), LAYOUTS.get(dataset)
    _check_output(out, overwrite, sal_batch, workers, options)
    samples = open_writer(dataset, split, **{k: options.get(k) for k in OPTIONS})
    source = samples.source
    plan = _plan(dataset, layout, source, [(saliency, teacher, params, "--sal-param"),
                                                         (saliency2, teacher2 or teacher, params2, "--sal2-param")])
    device = pick_device(device)
    teachers = {t: _load_teacher(t, source, device) for _, t, _ in plan if t is not None}  # loaded once each
    write_args = {"overwrite": overwrite, "workers": workers, "writer": writer, "progress": progress}
    if plan[0][0] == "none":
        return write_beton(samples, source, out, **write_args)
    if len(plan) == 1 and plan[0][0] in WEAK_KINDS:
        return write_beton(samples, source, out, maps={"sal": weak_map(plan[0][0])}, **write_args)
    computed = _teacher_maps(samples, source, plan, teachers, sal_batch, device)
    maps = {name: SaliencyMap(g, info, bitlayout.pack_np(p)) for name, (g, p, info) in zip(("sal", "sal2"), computed)}
    return write_beton(samples, source, out, maps=maps, **write_args)


def _teacher_maps(samples, source, plan, teachers: dict, sal_batch: int, device) -> list[tuple[str, np.ndarray, dict]]:
    """(granularity, positive mask, provenance) per planned map: weak masks from the layout, the
    others computed by their teachers; maps of two granularities both widened to per element."""
    images, labels, masks = _gather(samples)
    computed = []
    for method, teacher, params in plan:
        if method not in SALIENCY:
            computed.append(("pixel", masks, {"method": method, "equation": "Eq. 10"}))
            continue
        ckpt = teachers.get(teacher)
        positive, zero_maps = compute(method, ckpt and ckpt["model"], images, labels, batch_size=sal_batch,
                                      device=device, params=params)
        if zero_maps:
            source.notes.append(f"{method}: {zero_maps} all-zero maps stored as all +1 (tie rule)")
        info = {"method": method, "params": params}
        if ckpt is not None:
            cfg = ckpt["config"]
            info.update(teacher=str(teacher), teacher_blake2b=file_hash(teacher), teacher_model=cfg["model"],
                        teacher_width=cfg["width"], teacher_method=cfg["method"])
        computed.append((SALIENCY.get(method).granularity, positive, info))
    if len({g for g, _, _ in computed}) > 1:  # mixable maps share one layout: widen pixel maps
        c = source.image_shape[2]
        computed = [("element", p if g == "element" else np.repeat(p[..., None], c, axis=3), i) for g, p, i in computed]
    return computed


def write(args):
    """The parsed flags → ``write_dataset``."""
    return write_dataset(args.dataset, args.split, args.out, saliency=args.saliency, teacher=args.teacher,
                         params=_params(args.sal_param, "--sal-param"), saliency2=args.saliency2,
                         teacher2=args.teacher2, params2=_params(args.sal2_param, "--sal2-param"),
                         sal_batch=args.sal_batch, device=args.device, writer=args.writer, workers=args.workers,
                         overwrite=args.overwrite, **{k: getattr(args, k) for k in OPTIONS})


def main(argv=None) -> int:
    return run_cli(lambda: summary(write(parser().parse_args(argv))))


if __name__ == "__main__":
    raise SystemExit(main())
