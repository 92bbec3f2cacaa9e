"""python -m fastsat.compare: several methods (and seeds) on the same betons, side by side.

    python -m fastsat.compare --methods standard,noise,sat,fgsm_rs --seeds 3 --out runs/cmp [train flags]

Each method is trained once per seed (OUT/<method>/seed<k>/; finished runs are skipped unless
--overwrite, so a comparison can be completed across sittings); OUT/comparison.{md,json} give mean
± 95% t-interval per cell, OUT/frontier.png the cost–robustness frontier with error bars.
A finished run is reused only if every setting that affects training or evaluation and each
beton's content hash equal the request; otherwise compare refuses, naming what differs
(--overwrite replaces the run, --beside trains a fresh one next to it).

Exit codes: 0 done; 2 bad input (one ``error:`` line); 3 done, but a gradient-masking check failed
for some run (its cells are marked "masked"; --no-fail-on-masking exits 0); 130 interrupted.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import sys
from pathlib import Path

from .config import build_parser, config_from_args, read_recipes
from .options import parse_eps
from .errors import InputError, masked_exit, run_cli
from .methods import METHODS


def parser():
    ap = build_parser("python -m fastsat.compare", __doc__.split("\n\n")[0],
                      epilog="methods: " + METHODS.help() + ".\n\n" + __doc__.split("\n\n")[-1])
    ap.add_argument("--methods", default="standard,noise,sat,fgsm_rs", help="comma-separated training methods")
    ap.add_argument("--seeds", type=int, default=1, help="runs per method, seeds --seed, --seed + 1, ...")
    ap.add_argument("--frontier-eps", type=parse_eps, default=None,
                    help="ε (1/255) of the frontier plot, one of --eval-eps (default: the largest)")
    ap.add_argument("--recipes", type=Path,
                    help="TOML / YAML / JSON table {method: {setting: value}}: each method's own training recipe "
                         "(e.g. fgsm_rs with optimizer sgd, lr_schedule onecycle, weight_decay 5e-4), recorded in "
                         "every run's config and in the table")
    ap.add_argument("--jobs", type=int, default=0,
                    help="runs trained at once, each in its own process with its share of the threads (0: the "
                         "machine's cores on CPU, 1 on CUDA); their training times are then taken side by side")
    ap.add_argument("--beside", action="store_true",
                    help="a method's folder holds a run made with other settings or data: train a fresh run next "
                         "to it (folder name + a hash of the settings) instead of refusing")
    return ap


def jobs(asked: int, device: str) -> int:
    """``--jobs``: as asked, or (0) one per core on CPU and one on CUDA."""
    import os

    if asked < 0:
        raise InputError(f"--jobs must be >= 0, got {asked}")
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return asked or (1 if cuda else len(os.sched_getaffinity(0)))


def main(argv=None) -> int:
    def body():
        args = parser().parse_args(argv)
        from .comparison import compare  # timm (and with it Triton) loads only once the flags are good

        base = config_from_args(args)
        methods = [m for m in args.methods.split(",") if m]
        if not methods:
            raise InputError("--methods names no method")
        for m in methods:
            METHODS.get(m)
        eps = args.frontier_eps if args.frontier_eps is not None else max(base.eval_eps)
        recipes = read_recipes(args.recipes, methods) if args.recipes else None
        table, summaries = compare(base, methods, args.seeds, Path(base.out), eps, beside=args.beside,
                                   recipes=recipes, jobs=jobs(args.jobs, base.device))
        return table, masked_exit([s["robustness"] for s in summaries], base.fail_on_masking)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
