"""The files of a run folder, by name: the one place that spells them. A run (``trainer``) writes
``config.json`` (its marker), ``metrics.jsonl`` (``metrics.csv``), ``checkpoint.pt`` (every
epoch), ``best.pt`` (the selected epoch), the verdict (``robustness.json``, ``.md``, ``.png``) and
``summary.json`` (once finished); every other module asks a :class:`RunFiles` for them."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def read_json(path: Path):
    """A JSON file's content; an unreadable or damaged one is one line naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: unreadable or damaged ({why})") from None


class RunFiles:
    """The paths of one run folder's files, and what they say: finished? its summary, its checkpoint."""
    CONFIG, METRICS, METRICS_CSV = "config.json", "metrics.jsonl", "metrics.csv"
    CHECKPOINT, BEST, SUMMARY = "checkpoint.pt", "best.pt", "summary.json"
    REPORT, REPORT_MD, REPORT_PLOT = "robustness.json", "robustness.md", "robustness.png"

    def __init__(self, folder):
        self.folder = Path(folder)

    @property
    def config(self) -> Path:
        return self.folder / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.folder / self.METRICS

    @property
    def metrics_csv(self) -> Path:
        return self.folder / self.METRICS_CSV

    @property
    def checkpoint(self) -> Path:
        return self.folder / self.CHECKPOINT

    @property
    def best(self) -> Path:
        return self.folder / self.BEST

    @property
    def summary(self) -> Path:
        return self.folder / self.SUMMARY

    @property
    def report(self) -> Path:
        return self.folder / self.REPORT

    @property
    def report_md(self) -> Path:
        return self.folder / self.REPORT_MD

    @property
    def report_plot(self) -> Path:
        return self.folder / self.REPORT_PLOT

    @classmethod
    def names(cls) -> set[str]:
        """Every file name a run writes in its folder."""
        return {v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}

    def only_run_files(self) -> bool:
        """The folder holds nothing but what runs write: their files, and folders of reports (a
        study's gradings of the run)."""
        report = {self.REPORT, self.REPORT_MD, self.REPORT_PLOT}
        return all(p.name in self.names() if p.is_file() and not p.is_symlink() else
                   p.is_dir() and not p.is_symlink() and all(q.name in report for q in p.iterdir())
                   for p in self.folder.iterdir())

    def finished(self) -> bool:
        """The run trained and graded its selected checkpoint (``summary.json`` exists)."""
        return self.summary.is_file()

    def read(self, name: str) -> dict:
        """A JSON file of the run (``config``, ``summary``, ``report``)."""
        return read_json(getattr(self, name))

    def selected(self, last: bool = False) -> Path:
        """The checkpoint a verdict grades: ``best.pt`` (the selected epoch), or the last epoch's."""
        return self.checkpoint if last or not self.best.is_file() else self.best
