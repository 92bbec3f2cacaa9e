"""python -m fastsat.saliency_grid: a PNG grid of a beton's first images beside their teacher saliency signs.

    python -m fastsat.saliency_grid --teacher CKPT --beton X.beton --out grid.png [--methods a,b] [--n 6]
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

from pathlib import Path

import numpy as np
import torch

from .beton import open_beton
from .errors import ArgumentParser, InputError, run_cli
from .reader import BetonReader
from .runs import load_checkpoint
from .saliency import SALIENCY, grid


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m fastsat.saliency_grid",
                        description="PNG grid of images beside their teacher saliency signs",
                        epilog="saliency methods: " + SALIENCY.help() + ".")
    ap.add_argument("--teacher", type=Path, required=True, help="checkpoint of fastsat.train")
    ap.add_argument("--beton", type=Path, required=True, help="beton whose first samples are shown")
    ap.add_argument("--out", type=Path, default=Path("saliency_grid.png"), help="PNG to write")
    ap.add_argument("--methods", default=",".join(SALIENCY), help="comma-separated saliency methods")
    ap.add_argument("--n", type=int, default=6, help="samples (the first n of the beton)")
    return ap


def main(argv=None) -> int:
    def body():
        args = parser().parse_args(argv)
        methods = [m for m in args.methods.split(",") if m]
        for m in methods:
            SALIENCY.get(m)
        if args.n < 1:
            raise InputError(f"--n must be >= 1, got {args.n}")
        if args.out.suffix.lower() != ".png" or not args.out.parent.is_dir() or args.out.is_dir():
            raise InputError(f"--out {args.out}: expected a .png file in an existing folder")
        info = open_beton(args.beton)
        ckpt = load_checkpoint(args.teacher, torch.device("cpu"))
        if ckpt["model_args"]["num_classes"] != info.num_classes:
            raise InputError(f"teacher has {ckpt['model_args']['num_classes']} classes, {args.beton} has "
                             f"{info.num_classes}")
        idx = np.arange(min(args.n, info.num_samples))
        reader = BetonReader(info.path)
        grid(ckpt["model"], reader.read("image", idx), reader.read("label", idx), methods, args.out,
             f"teacher {ckpt['config']['model']} ({ckpt['config']['method']}) on {info.manifest['dataset']}")
        return f"wrote {args.out}"
    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
