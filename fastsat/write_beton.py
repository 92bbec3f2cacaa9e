"""python -m fastsat.write_beton: a dataset's official layout → X.beton + X.beton.json.

    python -m fastsat.write_beton --dataset digits --split train --out data/digits_train.beton
    python -m fastsat.write_beton --dataset tiny-imagenet --root ~/data --split val --out val.beton
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .writers import DATASETS, SALIENCY, InputError, open_writer


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastsat.write_beton", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--root", type=Path, help="folder holding the dataset's official layout (not for digits)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", type=Path, required=True, help="output .beton path (manifest goes to OUT.json)")
    ap.add_argument("--saliency", default="auto", help="none | bbox | mask | auto (the layout's own, if any)")
    ap.add_argument("--side", type=int, help="resize images (and masks/boxes) to SIDE x SIDE pixels")
    ap.add_argument("--fold", type=int, default=1, help="flowers17 split fold (1-3)")
    ap.add_argument("--missing-mask", default="skip", choices=("skip", "keep"),
                    help="flowers17 images without a trimap: skip them, or keep them with has_sal = 0")
    ap.add_argument("--mask-root", type=Path, help="folder: parallel tree of masks (<class>/<stem>.png)")
    ap.add_argument("--workers", type=int, default=-1, help="writer processes (-1: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap.parse_args(argv)


def summary(info) -> str:
    m = info.manifest
    h, w, c = m["image_shape"]
    sal = ", ".join(f"{name}: {v['nbytes']} B ({v['granularity']}, {v['source'].get('method')})"
                    for name, v in m["saliency"].items()) or "no saliency"
    notes = (" " + " ".join(m["notes"])) if m["notes"] else ""
    return (f"Wrote {info.path}: {m['num_samples']} samples of {m['dataset']}/{m['split']}, "
            f"{m['num_classes']} classes, images {h}x{w}x{c} ({h * w * c} B per sample, raw), {sal}; "
            f"file {m['file_size'] / 1e6:.1f} MB ({m['file_size'] / m['num_samples']:.0f} B per sample); "
            f"manifest {info.path}.json.{notes}")


def write(args) -> "object":
    from .beton import SaliencyMap, write_beton

    samples = open_writer(args.dataset, args.root, args.split, args.side, args.fold, args.missing_mask,
                          args.mask_root)
    source = samples.source
    saliency = source.saliency if args.saliency == "auto" else args.saliency
    if saliency not in ("none", *SALIENCY[args.dataset]):
        raise InputError(f"{args.dataset} has no {saliency!r} saliency (it has: "
                         f"{', '.join(('none', *SALIENCY[args.dataset]))}; teacher maps: see --help)")
    maps = {} if saliency == "none" else {"sal": SaliencyMap("pixel", {"method": saliency, "equation": "Eq. 10"})}
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
