"""matplotlib, headless: one place that sets the Agg back end, makes figures and saves them."""
from __future__ import annotations

from pathlib import Path


def subplots(*args, **kwargs):
    """``plt.subplots`` on the Agg back end (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save(fig, path: Path, dpi: int = 120) -> None:
    """Atomically, like every output: a reader sees the old picture or the new one."""
    import matplotlib.pyplot as plt

    from .files import atomic_write

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def spread_labels(points: list[tuple[float, float]], x_near: float, y_gap: float) -> list[float]:
    """Heights for the points' labels so that labels of points less than ``x_near`` apart in x are
    at least ``y_gap`` apart in y; each label is placed as low as that allows, never below its point."""
    heights = [0.0] * len(points)
    placed: list[tuple[float, float]] = []
    for i in sorted(range(len(points)), key=lambda i: points[i][1]):
        x, y = points[i]
        for px, py in sorted(placed, key=lambda p: p[1]):
            if abs(x - px) < x_near and abs(y - py) < y_gap:
                y = py + y_gap
        heights[i] = y
        placed.append((x, y))
    return heights
