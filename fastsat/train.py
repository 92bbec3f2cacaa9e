"""python -m fastsat.train: betons → a robust timm ResNet, with every method of the paper.

    python -m fastsat.train --method sat --train data/digits_train.beton --val data/digits_test.beton \\
        --model resnet10 --width 0.25 --epochs 10 --out runs/sat
    torchrun --nproc_per_node 2 -m fastsat.train ...   # DistributedDataParallel (nccl / gloo)

Writes OUT/config.json, OUT/metrics.jsonl (a line per epoch, with holdout clean / PGD accuracy),
OUT/checkpoint.pt (every epoch, atomically; --resume continues from it exactly), OUT/best.pt (the
epoch with the best holdout PGD accuracy), then OUT/robustness.{json,md,png} and OUT/summary.json
for the selected checkpoint on the test beton.

Exit codes: 0 done; 2 bad input (one ``error:`` line); 3 done, but a gradient-masking check failed
(the reports say ``masked``; --no-fail-on-masking exits 0); 130 interrupted.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import sys

from .config import build_parser, config_from_args
from .errors import masked_exit, run_cli
from .methods import METHODS


def parser():
    return build_parser("python -m fastsat.train", __doc__.split("\n\n")[0],
                        epilog="methods: " + METHODS.help() + ".\n\n" + __doc__.split("\n\n")[-1])


def main(argv=None) -> int:
    def body():
        args = parser().parse_args(argv)
        from .trainer import train  # timm (and with it Triton) loads only once the flags are good

        cfg = config_from_args(args)
        summary = train(cfg)
        return summary.get("table"), masked_exit([summary.get("robustness", {})], cfg.fail_on_masking)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
