"""The README's main command: the embedded digits data set written as betons (if missing)."""
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
            print(summary(open_beton(path)).replace("Wrote", "Found", 1))
        paths[split] = path
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastsat.demo", description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("data"))
    args = ap.parse_args(argv)
    try:
        ensure_digits(args.data)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
