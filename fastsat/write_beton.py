"""python -m fastsat.write_beton: a dataset's official layout → X.beton + X.beton.json.

    python -m fastsat.write_beton --dataset digits --split train --out data/digits_train.beton
    python -m fastsat.write_beton --dataset tiny-imagenet --root ~/data --split val --out val.beton
    python -m fastsat.write_beton --dataset cifar10 --root ~/data --out c10.beton \
        --saliency gbp --teacher runs/teacher/checkpoint.pt --saliency2 gradcam_pp_box

Weak saliency (Eq. 10: ``bbox``, ``mask``) comes from the layout; teacher saliency (``grad_sign``,
``gbp``, ``smoothgrad``, ``ig``, ``gradcam_pp_box``, ``guided_gradcam_pp``) is computed in batches
in this process, on ``--device``, before FFCV's forking writer starts. Two maps of different
granularity are both stored per element, so a per-sample coin can pick either (paper Table 7).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .kernels import bits as bitlayout
from .writers import DATASETS, SALIENCY, InputError, open_writer


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastsat.write_beton", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--root", type=Path, help="folder holding the dataset's official layout (not for digits)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", type=Path, required=True, help="output .beton path (manifest goes to OUT.json)")
    ap.add_argument("--saliency", default="auto",
                    help="none | bbox | mask | auto (the layout's own) | a teacher method (needs --teacher)")
    ap.add_argument("--teacher", type=Path, help="checkpoint of fastsat.train for teacher saliency")
    ap.add_argument("--saliency2", help="a second map, field sal2 (teacher method, or the layout's weak map)")
    ap.add_argument("--teacher2", type=Path, help="teacher of --saliency2 (default: --teacher)")
    ap.add_argument("--sal-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of --saliency, e.g. threshold=0.4 (gradcam_pp_box), samples=32 sigma=0.1 "
                         "seed=0 (smoothgrad), steps=64 (ig); repeatable")
    ap.add_argument("--sal2-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of --saliency2; repeatable")
    ap.add_argument("--sal-batch", type=int, default=256, help="teacher batch size")
    ap.add_argument("--device", default="auto", help="device for teacher saliency")
    ap.add_argument("--side", type=int, help="resize images (and masks/boxes) to SIDE x SIDE pixels")
    ap.add_argument("--fold", type=int, default=1, help="flowers17 split fold (1-3)")
    ap.add_argument("--missing-mask", default="skip", choices=("skip", "keep"),
                    help="flowers17 images without a trimap: skip them, or keep them with has_sal = 0")
    ap.add_argument("--mask-root", type=Path, help="folder: parallel tree of masks (<class>/<stem>.png)")
    ap.add_argument("--workers", type=int, default=-1, help="writer processes (-1: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap.parse_args(argv)


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


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--sal-param {pair!r}: expected KEY=VALUE")
        out[key] = float(value) if "." in value else int(value)
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


def _teacher_map(method, ckpt_path, samples, images, labels, args, params):
    from .saliency import DEFAULTS, GRANULARITY, compute
    from .train import load_checkpoint, pick_device

    if ckpt_path is None:
        raise InputError(f"--saliency {method} needs --teacher CKPT (a checkpoint of fastsat.train)")
    device = pick_device(args.device)
    ckpt = load_checkpoint(ckpt_path, device)
    source = samples.source
    if ckpt["num_classes"] != len(source.class_names):
        raise InputError(f"teacher {ckpt_path} has {ckpt['num_classes']} classes but {source.dataset} has "
                         f"{len(source.class_names)}")
    if ckpt["identity"]["dataset"] != source.dataset:
        raise InputError(f"teacher {ckpt_path} was trained on {ckpt['identity']['dataset']}, not {source.dataset}")
    positive, zero_maps = compute(method, ckpt["model"], images, labels, batch_size=args.sal_batch, device=device,
                                  params=params)
    from .beton import file_hash

    info = {"method": method, "params": {**DEFAULTS.get(method, {}), **params}, "teacher": str(ckpt_path), "teacher_blake2b": file_hash(ckpt_path),
            "teacher_model": ckpt["config"]["model"], "teacher_width": ckpt["config"]["width"],
            "teacher_method": ckpt["config"]["method"]}
    return GRANULARITY[method], positive, info, zero_maps


def write(args) -> "object":
    from .beton import SaliencyMap, write_beton
    from .saliency import METHODS as TEACHER_METHODS

    samples = open_writer(args.dataset, args.root, args.split, args.side, args.fold, args.missing_mask,
                          args.mask_root)
    source = samples.source
    weak = ("none", *SALIENCY[args.dataset])
    requested = [source.saliency if args.saliency == "auto" else args.saliency] + (
        [args.saliency2] if args.saliency2 else [])
    for method in requested:
        if method not in weak and method not in TEACHER_METHODS:
            raise InputError(f"{args.dataset} has no {method!r} saliency (weak: {', '.join(weak)}; "
                             f"teacher: {', '.join(TEACHER_METHODS)})")
    if requested[0] == "none":
        if len(requested) > 1:
            raise InputError("--saliency2 needs a first saliency map")
        return write_beton(samples, source, args.out, overwrite=args.overwrite, workers=args.workers)
    if args.out.exists() and not args.overwrite:  # fail before minutes of teacher saliency
        raise InputError(f"{args.out} exists (use --overwrite to replace it)")
    if len(requested) == 1 and requested[0] in weak:
        maps = {"sal": SaliencyMap("pixel", {"method": requested[0], "equation": "Eq. 10"})}
        return write_beton(samples, source, args.out, maps=maps, overwrite=args.overwrite, workers=args.workers)

    images, labels, masks = _gather(samples)
    computed = []
    for method, teacher, params in zip(requested, [args.teacher, args.teacher2 or args.teacher],
                                       [_params(args.sal_param), _params(args.sal2_param)]):
        if method in TEACHER_METHODS:
            granularity, positive, info, zero_maps = _teacher_map(method, teacher, samples, images, labels, args, params)
            if zero_maps:
                source.notes.append(f"{method}: {zero_maps} all-zero maps stored as all +1 (tie rule)")
        else:
            granularity, positive, info = "pixel", masks, {"method": method, "equation": "Eq. 10"}
        computed.append((granularity, positive, info))
    if len({g for g, _, _ in computed}) > 1:  # mixable maps share one layout: widen pixel maps
        c = source.image_shape[2]
        computed = [("element", p if g == "element" else np.repeat(p[..., None], c, axis=3), i) for g, p, i in computed]
    maps = {name: SaliencyMap(g, info, bitlayout.pack_np(p)) for name, (g, p, info) in zip(("sal", "sal2"), computed)}
    return write_beton(samples, source, args.out, maps=maps, overwrite=args.overwrite, workers=args.workers)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        info = write(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
