"""The README's main command, on the embedded digits set (no download), on 2 CPU cores in about 35 minutes.

Writes the digits betons if missing, then trains standard, noise, SAT, the random-sign control,
FGSM-RS and N-FGSM with the same narrow ResNet-10 and prints their robustness side by side (``fastsat.comparison``): PGD-20,
AutoAttack, the white-box saliency attack and the per-sample worst case, with the masking checks
in each run's ``robustness.md``. Plots and per-method reports land in ``runs/demo``. Extra
arguments are ``fastsat.compare`` flags (e.g. ``--seeds 3``); ``--jobs`` (default: one per core on
CPU) trains and grades that many methods at once, each in its own process.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import sys
from pathlib import Path

from .beton import open_beton, weak_map, write_beton
from .compare import jobs
from .comparison import compare
from .config import build_parser, config_from_args
from .errors import InputError, masked_exit, run_cli
from .writers import open_writer


def ensure_digits(data: Path) -> dict[str, Path]:
    """data/digits_{train,test}.beton (ink mask as Eq. 10 saliency), written once; reused
    (after validation) on later runs."""
    data.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        path = data / f"digits_{split}.beton"
        if path.exists():
            open_beton(path)
        else:
            samples = open_writer("digits", split)
            write_beton(samples, samples.source, path, maps={"sal": weak_map("mask")})
            print(f"wrote {path}", file=sys.stderr)
        paths[split] = path
    return paths


# ε grid chosen so that standard training's accuracy falls from ~90% to 0 across it. AutoAttack's two
# APGD attacks (100 iterations each): the standard version's APGD-T, FAB-T and Square (5000 queries)
# take tens of minutes per robust model and ε on 2 CPU cores (--eval-aa standard to run them)
DEMO = ["--model", "resnet10", "--width", "0.25", "--epochs", "15", "--batch-size", "64", "--lr", "2e-3",
        "--eval-eps", "2,4,8", "--eval-noise", "8,32", "--eval-aa", "apgd-ce,apgd-dlr", "--out", "runs/demo",
        "--overwrite"]
METHODS = "standard,noise,sat,sign,fgsm_rs,n_fgsm"
FRONTIER_EPS = 4.0


def main(argv=None) -> int:
    ap = build_parser("python -m fastsat.demo", __doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data"), help="folder of the digits betons")
    ap.add_argument("--seeds", type=int, default=1, help="runs per method")
    ap.add_argument("--jobs", type=int, default=0, help="runs trained at once, each in its own process (0: the "
                    "machine's cores on CPU, 1 on CUDA)")
    def body():
        args = ap.parse_args([*DEMO, *(argv if argv is not None else sys.argv[1:])])
        args.train = args.train or str(args.data / "digits_train.beton")
        args.val = args.val or str(args.data / "digits_test.beton")
        base = config_from_args(args)  # the whole request checked before anything is written
        if args.seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {args.seeds}")
        if args.data.exists() and not args.data.is_dir():
            raise InputError(f"--data {args.data} is a file, not a folder")
        ensure_digits(args.data)
        table, summaries = compare(base, METHODS.split(","), args.seeds, Path(base.out), FRONTIER_EPS,
                                   jobs=jobs(args.jobs, base.device))
        return table, masked_exit([s["robustness"] for s in summaries], base.fail_on_masking)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
