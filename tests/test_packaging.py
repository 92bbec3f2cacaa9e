"""The install maps kernels/ and writers/ to fastsat.kernels / fastsat.writers, and nothing else."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_subpackages_import_from_anywhere(tmp_path):
    proc = run("import fastsat.kernels.sat as s, fastsat.writers.cifar as w; print(s.__file__); print(w.__file__)",
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    kernels_file, writers_file = proc.stdout.split()
    assert Path(kernels_file) == ROOT / "kernels" / "sat.py"
    assert Path(writers_file) == ROOT / "writers" / "cifar.py"


def test_no_generic_top_level_modules(tmp_path):
    for name in ("kernels", "writers"):
        assert run(f"import {name}", tmp_path).returncode != 0, f"a top-level '{name}' module is installed"


def test_import_fastsat_stays_light(tmp_path):
    proc = run("import sys, fastsat; print(any(m in sys.modules for m in ('ffcv', 'captum', 'matplotlib', 'torch')))",
               tmp_path)
    assert proc.stdout.strip() == "False"
