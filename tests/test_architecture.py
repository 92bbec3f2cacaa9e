"""The shape of the code: no import cycles, no library module importing an entry point, registries
that CLI help, validation and tests all read, and a --help that documents every flag."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fastsat.methods import METHODS
from fastsat.saliency import SALIENCY
from fastsat.writers import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fastsat": ROOT / "fastsat", "fastsat.kernels": ROOT / "kernels", "fastsat.writers": ROOT / "writers"}
ENTRY_POINTS = {"fastsat.train", "fastsat.write_beton", "fastsat.evaluate", "fastsat.compare", "fastsat.demo",
                "fastsat.reproduce", "fastsat.export", "fastsat.signs", "fastsat.saliency_grid"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(name: str, path: Path, known: set) -> set:
    """Project modules ``name`` imports anywhere in its file (function-level imports included)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycle():
    g = graph()
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in g[node]:
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " → ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in g:
        if node not in state:
            visit(node)


def test_no_function_is_over_50_lines():
    """Library modules and benchmarks alike."""
    files = {**modules(), **{f"bench.{p.stem}": p for p in (ROOT / "bench").glob("*.py")}}
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, path in files.items() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50]
    assert not long


def test_library_modules_never_import_an_entry_point():
    bad = {m: sorted(deps & ENTRY_POINTS) for m, deps in graph().items() if m not in ENTRY_POINTS and deps & ENTRY_POINTS}
    assert not bad


def test_the_graph_sees_function_level_imports():
    g = graph()
    assert "fastsat.kernels.sat" in g["fastsat.methods"]  # imported inside Step.sat()
    assert "fastsat.errors" in g["fastsat.writers.common"]


def test_registries_are_complete_and_described():
    assert set(METHODS) >= {"standard", "noise", "sat", "sign", "fgsm_rs", "pgd", "pgd_noise", "pgd_sat", "trades",
                            "trades_noise", "trades_sat"}  # the paper's methods, the control, the peer
    needs = {m for m, e in METHODS.items() if e.needs_saliency}
    assert needs >= {"sat", "pgd_sat", "trades_sat"} and not needs & {"sign", "noise", "standard", "pgd"}
    assert "fgsm_rs" in {m for m, e in METHODS.items() if e.single_step}
    assert set(SALIENCY) >= {"grad_sign", "gbp", "smoothgrad", "ig", "gradcam_pp_box", "guided_gradcam_pp"}
    assert set(LAYOUTS) >= {"digits", "cifar10", "cifar100", "tiny-imagenet", "flowers17", "folder"}
    for registry in (METHODS, SALIENCY, LAYOUTS):
        assert all(e.description for _, e in registry.items())


def test_a_new_method_is_one_registration():
    from fastsat.methods import _ce, register_method

    @register_method("test_only_clean_twice", description="a method registered by this test")
    def twice(cfg, model, b):
        return _ce(model, b.clean(cfg), b.y)

    try:
        from fastsat.config import TrainConfig
        from fastsat.train import parser

        TrainConfig(method="test_only_clean_twice").validate()
        assert "test_only_clean_twice: a method registered by this test" in parser().format_help()
    finally:
        METHODS._entries.pop("test_only_clean_twice")


def run_help(module: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())


@pytest.mark.parametrize("module,must_list", [
    ("fastsat.train", [*METHODS, "adam", "cosine", "--eval-aa", "--holdout"]),
    ("fastsat.compare", [*METHODS, "--seeds"]),
    ("fastsat.evaluate", ["--eval-protocol", "--eval-aa", "--allow-other-data", "--eval-limit"]),
    ("fastsat.write_beton", [*LAYOUTS, *SALIENCY, "threshold=0.5", "samples=16"]),
])
def test_help_lists_every_choice(module, must_list):
    text = run_help(module)
    missing = [word for word in must_list if word not in text]
    assert not missing


@pytest.mark.parametrize("module", ["fastsat.train", "fastsat.evaluate", "fastsat.write_beton", "fastsat.compare",
                                    "fastsat.saliency_grid", "fastsat.signs"])
def test_every_flag_has_a_description(module):
    import importlib

    mod = importlib.import_module(module)
    ap = mod.parser() if hasattr(mod, "parser") else None
    if ap is None:
        pytest.skip("builds its parser inside main()")
    undocumented = [a.option_strings for a in ap._actions if a.option_strings and not a.help]
    assert not undocumented


def test_parsing_flags_loads_no_triton():
    code = "import sys; from fastsat.train import parser; parser().parse_args([]); print('triton' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def floors(g: dict) -> dict[str, int]:
    """Each module's floor: 1 for a module importing nothing of the project, else one above the
    highest module it imports (the import graph's height, checked acyclic above)."""
    memo: dict[str, int] = {}

    def floor(m: str) -> int:
        if m not in memo:
            memo[m] = 1 + max((floor(d) for d in g[m]), default=0)
        return memo[m]

    return {m: floor(m) for m in g}


MAX_FLOORS = 9  # docs/ARCHITECTURE.md states the figure


def test_the_import_graph_is_at_most_nine_floors():
    height = floors(graph())
    top = max(height.values())
    chain = sorted(height, key=height.get, reverse=True)[:3]
    assert top <= MAX_FLOORS, f"{top} floors: {chain}"


def test_only_the_run_folder_owner_names_a_runs_files():
    """Every module asks ``RunFiles`` for a run's files (``config.json`` aside: an export writes timm's
    own file of that name); none spells them to build a path (prose in help and messages aside)."""
    from fastsat.runfiles import RunFiles

    names = {RunFiles.METRICS, RunFiles.METRICS_CSV, RunFiles.CHECKPOINT, RunFiles.BEST, RunFiles.SUMMARY,
             RunFiles.REPORT, RunFiles.REPORT_MD, RunFiles.REPORT_PLOT}
    spelled = []
    for name, path in modules().items():
        if name == "fastsat.runfiles":
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and n.body and isinstance(n.body[0], ast.Expr)}
        spelled += [f"{name}:{n.lineno} {n.value}" for n in ast.walk(tree) if isinstance(n, ast.Constant)
                    and n.value in names and id(n) not in docs]
    assert not spelled


def test_the_verdict_imports_no_training_code():
    """``fastsat.verdict`` grades any classifier: it must not pull in the trainer, the methods, the
    loaders or the beton writer."""
    code = ("import sys, fastsat; fastsat.verdict; "
            "print(sorted(m for m in sys.modules if m.startswith('fastsat')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    loaded = set(eval(proc.stdout))  # a list of module names
    assert "fastsat.robustness" in loaded, proc.stderr
    assert not loaded & {"fastsat.trainer", "fastsat.methods", "fastsat.config", "fastsat.data", "fastsat.beton",
                         "fastsat.ffcv_write", "fastsat.runs"}, loaded


def test_the_stated_layer_order():
    """docs/ARCHITECTURE.md: kernels/ imports nothing of the project's other layers; writers/ imports
    kernels and, of fastsat/, only the leaves errors and registry."""
    g = graph()
    kernels = {m for m in g if m.startswith("fastsat.kernels")}
    writers = {m for m in g if m.startswith("fastsat.writers")}
    assert all(g[m] <= kernels for m in kernels), {m: g[m] - kernels for m in kernels if g[m] - kernels}
    allowed = kernels | writers | {"fastsat.errors", "fastsat.registry"}
    assert all(g[m] <= allowed for m in writers), {m: g[m] - allowed for m in writers if g[m] - allowed}
