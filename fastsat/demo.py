"""The README's main command, on the embedded digits set (no download), in minutes on 2 CPU cores.

Writes the digits betons if missing, then trains standard, noise, SAT and FGSM-RS with the same
narrow ResNet-10 and prints their robustness side by side (``fastsat.compare``); plots and
per-method reports land in ``runs/demo``. Extra arguments go to ``fastsat.compare``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .beton import open_beton
from .write_beton import main as write_main
from .write_beton import summary
from .writers import InputError


def ensure_digits(data: Path) -> dict[str, Path]:
    """data/digits_{train,test}.beton, written once; reused (after validation) on later runs."""
    data.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        path = data / f"digits_{split}.beton"
        if not path.exists():
            if write_main(["--dataset", "digits", "--split", split, "--out", str(path)]) != 0:
                raise SystemExit(2)
        else:
            print(summary(open_beton(path), verb="Found"))
        paths[split] = path
    return paths


# ε grid chosen so that standard training's PGD accuracy falls from ~90% to 0 across it
DEMO = ["--methods", "standard,noise,sat,fgsm_rs", "--model", "resnet10", "--width", "0.25", "--epochs", "15",
        "--batch-size", "64", "--lr", "2e-3", "--eval-eps", "1,2,4,8,16", "--eval-noise", "8,32",
        "--frontier-eps", "4", "--out", "runs/demo", "--overwrite"]


def main(argv=None) -> int:
    from .compare import main as compare_main

    ap = argparse.ArgumentParser(prog="python -m fastsat.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    args, rest = ap.parse_known_args(argv)
    try:
        paths = ensure_digits(args.data)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return compare_main(DEMO + ["--train", str(paths["train"]), "--val", str(paths["test"]), *rest])


if __name__ == "__main__":
    sys.exit(main())
