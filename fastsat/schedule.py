"""The resumable step scheduler of studies: a step is done when its output exists and ready when
the steps it needs are done; several processes running one plan on one folder each claim a
different step (``files.Claim``), so a study is completed across sittings and processes."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .files import Claim


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").replace("__", "_")


@dataclass
class Step:
    """One unit of the protocol: done when its output exists; ready when the steps it needs are done."""
    name: str
    needs: tuple[str, ...]
    done: Callable[[], bool]
    run: Callable[[], object]


def run_plan(out: Path, plan: list[Step], poll: float = 15.0) -> None:
    """Run every step not done, in order, as soon as what it needs is done. Several processes may
    run the same plan on one folder: each step is claimed by one of them (``files.Claim``), the
    others go on with the next ready step, or wait for the steps they need."""
    said = ""
    while True:
        done = {s.name for s in plan if s.done()}
        pending = [s for s in plan if s.name not in done]
        if not pending:
            return
        for s in (s for s in pending if all(n in done for n in s.needs)):
            with Claim(out / slug(s.name)) as mine:
                if mine and not s.done():  # done meanwhile by the process that held it
                    s.run()
                    break
        else:
            waiting = f"waiting for other processes: {', '.join(s.name for s in pending)}"
            if waiting != said:
                print(waiting, file=sys.stderr, flush=True)
                said = waiting
            time.sleep(poll)


def status(out: Path, plan: list[Step]) -> str:
    """Which steps are done, running (claimed by a process), ready to start, or waiting for others;
    nothing is run."""
    done = {s.name for s in plan if s.done()}
    state = {s.name: "waiting" for s in plan if s.name not in done}
    for s in (s for s in plan if s.name in state and all(n in done for n in s.needs)):
        with Claim(out / slug(s.name)) as free:  # held: a live process is doing it
            state[s.name] = "ready" if free else "running"
    lines = [f"{len(done)} of {len(plan)} steps done"]
    for kind in ("running", "ready", "waiting"):
        lines.append(f"{kind}: " + (", ".join(n for n, k in state.items() if k == kind) or "none"))
    return "\n".join(lines)
