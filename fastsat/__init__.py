"""fastsat: saliency-based adversarial training (SAT) on FFCV betons, and verdicts you can trust.

``fastsat.verdict(model, x, y, eps=...)`` grades any PyTorch classifier with the default protocol
(see :func:`fastsat.robustness.verdict`). Heavy modules load on first use, so ``import fastsat``
stays fast.
"""


def __getattr__(name):
    if name == "verdict":
        from .robustness import verdict

        return verdict
    raise AttributeError(f"module 'fastsat' has no attribute {name!r}")
