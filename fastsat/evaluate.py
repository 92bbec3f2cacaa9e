"""python -m fastsat.evaluate: the robustness report of a checkpoint (see ``robustness.py``).

    python -m fastsat.evaluate --checkpoint runs/x/best.pt [--val B.beton] [--eval-eps 2,4,8] [--eval-aa standard]

Evaluation settings default to those the run was trained with; flags override them. A beton of
another dataset or image shape than the model's training data is refused unless
``--allow-other-data`` (the report then says so).

Exit codes: 0 done; 2 bad input (one ``error:`` line); 3 done, but a gradient-masking check failed
(the reports say ``masked``; --no-fail-on-masking exits 0); 130 interrupted.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import sys
from pathlib import Path

from .beton import open_beton
from .config import add_fields, config_from_args, evaluate_names
from .errors import ArgumentParser, InputError, masked_exit, run_cli
from .distributed import init_from_env, run_ranks
from .robustness import grade_beton
from .runs import load_checkpoint, other_data, pick_device


EVAL_FIELDS = evaluate_names()  # the run's config supplies the rest


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m fastsat.evaluate", description=__doc__.split("\n\n")[0],
                        epilog=__doc__.split("\n\n")[-1])
    ap.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt or best.pt of a run")
    ap.add_argument("--val", type=Path, help="beton to evaluate on (default: the run's test beton)")
    ap.add_argument("--out", type=Path, help="report folder (default: the checkpoint's folder)")
    ap.add_argument("--eval-procs", type=int, default=1,
                    help="grade on this many local processes (CPU; each a share of the threads): the samples are "
                         "split between them, the report is the one process's. Under torchrun the ranks it "
                         "starts grade instead")
    add_fields(ap, EVAL_FIELDS)
    return ap


def evaluate(args) -> str:
    device = pick_device(args.device or "auto")
    if args.eval_procs < 1:
        raise InputError(f"--eval-procs must be >= 1, got {args.eval_procs}")
    rank, world = init_from_env(device)
    if world > 1 and args.eval_procs > 1:
        raise InputError("--eval-procs starts ranks itself; under torchrun the ranks are torchrun's (leave it out)")
    ckpt = load_checkpoint(args.checkpoint, device)
    cfg = config_from_args(args, base=ckpt["config"], names=EVAL_FIELDS)
    out = args.out or args.checkpoint.parent
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    info = open_beton(args.val or cfg.val)
    trained = ckpt["model_args"]
    if info.num_classes != trained["num_classes"]:
        raise InputError(f"{info.path} has {info.num_classes} classes but the checkpoint's model has "
                         f"{trained['num_classes']}")
    other = other_data(info, ckpt["identity"]["dataset"], trained["image_shape"], cfg.allow_other_data)
    title = f"{cfg.method} on {info.manifest['dataset']}/{info.manifest['split']}"
    extra = {"checkpoint": str(args.checkpoint), **({"other_data": "; ".join(other)} if other else {})}
    report, md = run_ranks(args.eval_procs, grade_beton, ckpt["model"], info, cfg, device, out, title, True, extra)
    if rank > 0:
        return "", 0  # rank 0 writes and prints the report
    return md, masked_exit([report], cfg.fail_on_masking)


def main(argv=None) -> int:
    return run_cli(lambda: evaluate(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
