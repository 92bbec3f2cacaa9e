"""Nothing lost, nothing hung, nothing orphaned: kills, full disks, Ctrl-C, --overwrite and bad flags.

Processes started here are killed and reaped by the tests themselves; ``survivors`` checks that
no process of a killed command (its FFCV writers included) outlives it.
"""
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastsat import write_beton as write_beton_cli
from fastsat.beton import open_beton
from fastsat.evaluate import main as evaluate_main
from fastsat.train import main as train_main
from fastsat.write_beton import main as write_main
from tests import layouts

ROOT = Path(__file__).resolve().parents[1]


def survivors(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker`` (zombies excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmd and state != "Z":
                found.append(int(d.name))
    return found


def wait_gone(marker: str, seconds: float = 10.0) -> list[int]:
    deadline = time.time() + seconds
    while (left := survivors(marker)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def wait_until(ready, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Poll ``ready()`` while ``proc`` runs (the moment to kill or interrupt it)."""
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the command ended before the moment came"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen, ready, delay: float = 0.0, seconds: float = 300) -> str:
    """Ctrl-C ``proc`` once ``ready()`` (and ``delay`` seconds more); its stderr once it ended (killed
    and reaped whatever happens)."""
    try:
        wait_until(ready, proc, seconds)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.communicate()


def temp_of(folder: Path, name: str):
    return lambda: any(p.name.startswith(f".{name}.tmp") for p in folder.iterdir())


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def start(args: list[str], limit_bytes: int | None = None) -> subprocess.Popen:
    """A fastsat command in its own process; with ``limit_bytes``, files it writes are capped there
    (RLIMIT_FSIZE, SIGXFSZ ignored: a write past the cap fails as on a full disk)."""
    def cap():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, preexec_fn=cap, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def big_cifar(tmp_path_factory):
    """A CIFAR layout large enough that writing it takes a few seconds (time to kill the writer)."""
    root = tmp_path_factory.mktemp("bigcifar")
    layouts.cifar(root, "cifar10", per_batch=3000)
    return root


# ---- write_beton -----------------------------------------------------------------------------

def test_killed_write_leaves_nothing_and_no_process(big_cifar, tmp_path):
    out = tmp_path / "big.beton"
    proc = start(["fastsat.write_beton", "--dataset", "cifar10", "--root", str(big_cifar), "--out", str(out),
                  "--workers", "2"])
    try:
        wait_until(temp_of(tmp_path, "big.beton"), proc)
        time.sleep(0.5)  # the FFCV writer processes are running now
        proc.kill()
        proc.wait()
        assert not wait_gone(str(out)), "FFCV writer processes outlived their killed parent"
    finally:
        proc.kill()
        proc.communicate()
    assert not out.exists() and not (tmp_path / "big.beton.json").exists()
    # the next write to the same path removes the dead process's temporary file
    small = tmp_path / "small"
    layouts.cifar(small, "cifar10", per_batch=4)
    assert write_main(["--dataset", "cifar10", "--root", str(small), "--out", str(out), "--workers", "2"]) == 0
    assert hidden(tmp_path) == []


def test_full_disk_during_a_write_ends_promptly(big_cifar, tmp_path):
    out = tmp_path / "x.beton"
    (tmp_path / "x.beton").write_bytes(b"old")  # an existing output, replaced only by a good write
    proc = start(["fastsat.write_beton", "--dataset", "cifar10", "--root", str(big_cifar), "--out", str(out),
                  "--workers", "2", "--overwrite"], limit_bytes=8 << 20)
    try:
        _, err = proc.communicate(timeout=120)  # before the fix: hung forever
    finally:
        proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert err.count("error:") == 1 and "full disk" in err  # (after FFCV's progress bar, on its line)
    assert "Traceback" not in err  # the failed writer process prints nothing of its own
    assert out.read_bytes() == b"old" and hidden(tmp_path) == []
    assert not wait_gone(str(out))


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_ctrl_c_during_a_write(big_cifar, tmp_path, delay):
    """At any moment (while FFCV forks, while its writers run, while it collects their pages):
    exit 130 with one line, no writer process, queue thread or shared memory left behind. Before the
    fix, the watchdog took the killed writers for dead ones and cut the cleanup short: a hang."""
    out = tmp_path / "c.beton"
    proc = start(["fastsat.write_beton", "--dataset", "cifar10", "--root", str(big_cifar), "--out", str(out),
                  "--workers", "2"])
    err = interrupt(proc, temp_of(tmp_path, "c.beton"), delay)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("error:") == 1 and "error: interrupted" in err
    assert "Traceback" not in err and "leaked" not in err and "Exception ignored" not in err
    assert not out.exists() and hidden(tmp_path) == []
    assert not wait_gone(str(out))


AFTER_A_WRITE = """
import signal, sys, time
from pathlib import Path
from fastsat.errors import run_cli
from fastsat.write_beton import write_dataset

def body():
    write_dataset("digits", "test", Path(sys.argv[1]), workers=2, progress=False)
    print("written, sigint handler is python's own:", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          flush=True)
    time.sleep(120)  # a long study goes on after its beton is written
sys.exit(run_cli(body))
"""


def test_ctrl_c_stops_a_process_after_its_beton_write(tmp_path):
    """The write guard gives the caller's SIGINT handler back: a multi-hour study that wrote a beton
    still stops on Ctrl-C with 130 and one line (it kept running before: the guard's handler stayed)."""
    proc = subprocess.Popen([sys.executable, "-c", AFTER_A_WRITE, str(tmp_path / "d.beton")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.strip().endswith("True"), (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=20)[1]
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err[-2000:]
    assert err.count("error:") == 1 and "Traceback" not in err


def test_same_data_same_content_hash(tmp_path):
    for name in ("a", "b"):
        assert write_main(["--dataset", "digits", "--split", "test", "--out", str(tmp_path / f"{name}.beton"),
                           "--workers", "2"]) == 0
    a, b = (json.loads((tmp_path / f"{n}.beton.json").read_text())["content_blake2b"] for n in "ab")
    assert a == b


def test_the_library_writer_is_what_the_command_writes(tmp_path, monkeypatch):
    """``write_dataset`` (what reproduce and the benches call) and the command give the same beton;
    its bad requests fail before any sample is read."""
    from fastsat.errors import InputError
    from fastsat.write_beton import write_dataset

    assert write_main(["--dataset", "digits", "--split", "test", "--out", str(tmp_path / "cli.beton")]) == 0
    info = write_dataset("digits", "test", tmp_path / "lib.beton", progress=False)
    manifests = [json.loads((tmp_path / f"{n}.beton.json").read_text()) for n in ("cli", "lib")]
    assert info.manifest["content_blake2b"] == manifests[0]["content_blake2b"] == manifests[1]["content_blake2b"]
    assert manifests[1]["saliency"]["sal"]["source"]["method"] == "mask"  # the layout's weak map, as "auto" says

    def boom(*a, **k):
        raise AssertionError("samples read before the request was checked")
    monkeypatch.setattr(write_beton_cli, "open_writer", boom)
    for kwargs, words in [({"sides": 8}, "unknown layout options ['sides']"), ({"workers": 0}, "--workers"),
                          ({"sal_batch": 0}, "--sal-batch")]:
        with pytest.raises(InputError, match=re.escape(words)):
            write_dataset("digits", "test", tmp_path / "new.beton", **kwargs)
    with pytest.raises(InputError, match="exists"):
        write_dataset("digits", "test", tmp_path / "lib.beton")


def test_teacher_saliency_waits_for_the_output_checks(tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("saliency computed before the output path was checked")
    monkeypatch.setattr(write_beton_cli, "compute_chunks", boom)
    rc = write_main(["--dataset", "digits", "--out", str(tmp_path / "missing" / "x.beton"), "--saliency", "smoothgrad",
                     "--teacher", str(tmp_path / "t.pt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_labels_outside_the_classes_are_refused_at_open(tmp_path):
    out = tmp_path / "d.beton"
    assert write_main(["--dataset", "digits", "--split", "test", "--out", str(out), "--workers", "2"]) == 0
    manifest = json.loads(out.with_name("d.beton.json").read_text())
    manifest["num_classes"], manifest["class_names"] = 5, manifest["class_names"][:5]
    out.with_name("d.beton.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"label \d+, outside the 5 classes"):
        open_beton(out)


# ---- training --------------------------------------------------------------------------------

def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_flags, capsys):
    x = tmp_path / "x"
    x.mkdir()
    (x / "results.csv").write_text("1\n")
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(x), "--overwrite"]) == 2
    assert "not a fastsat run" in capsys.readouterr().err
    assert (x / "results.csv").read_text() == "1\n"


def test_overwrite_never_removes_the_runs_inputs(tmp_path, tiny_flags, digits, capsys):
    run = tmp_path / "run"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "1", "--out", str(run), "--eval-aa", "none"]) == 0
    inside = run / "train.beton"
    for suffix in ("", ".json"):
        Path(str(inside) + suffix).write_bytes(Path(str(digits["train"]) + suffix).read_bytes())
    assert train_main([*tiny_flags, "--train", str(inside), "--epochs", "1", "--out", str(run), "--overwrite"]) == 2
    assert "an input of this run" in capsys.readouterr().err
    assert inside.exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, tiny_flags, capsys):
    run = tmp_path / "run"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "1", "--out", str(run), "--eval-aa", "none"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert train_main([*tiny_flags, "--epochs", "1", "--out", str(run), "--overwrite", "--lr", "-1"]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # a new run that dies (full disk) at its first checkpoint: the old run comes back whole
    proc = start(["fastsat.train", *tiny_flags, "--epochs", "1", "--out", str(run), "--overwrite"],
                 limit_bytes=200_000)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "could not save" in err.strip().splitlines()[-1], err[-2000:]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert hidden(tmp_path) == [] and hidden(run) == []


def test_killed_new_run_gives_the_old_one_back(tmp_path, tiny_flags):
    run = tmp_path / "run"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "1", "--out", str(run), "--eval-aa", "none"]) == 0
    before = (run / "metrics.jsonl").read_text()
    proc = start(["fastsat.train", *tiny_flags, "--epochs", "3", "--out", str(run), "--overwrite", "--method", "noise"])
    try:
        wait_until(lambda: any(p.name.startswith(".run.replaced-") for p in tmp_path.iterdir()), proc)
        proc.kill()
    finally:
        proc.kill()
        proc.communicate()
    if (run / "checkpoint.pt").is_file() and torch.load(run / "checkpoint.pt", weights_only=False)["config"]["method"] == "noise":
        pytest.skip("the new run reached its first checkpoint before the kill")
    # the next command on that folder restores the old run, then resumes it
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "2", "--out", str(run), "--resume",
                       "--eval-aa", "none"]) == 0
    assert (run / "metrics.jsonl").read_text().startswith(before) and len(metrics(run)) == 2
    assert hidden(tmp_path) == []


def test_kill_during_training_then_exact_resume(tmp_path, tiny_flags):
    flags = [*tiny_flags, "--method", "sat", "--epochs", "3", "--eval-aa", "none", "--eval-eps", "2"]
    straight, killed = tmp_path / "a", tmp_path / "b"
    assert train_main([*flags, "--out", str(straight)]) == 0
    proc = start(["fastsat.train", *flags, "--out", str(killed)])
    try:
        wait_until((killed / "checkpoint.pt").is_file, proc)
        proc.kill()
    finally:
        proc.kill()
        proc.communicate()
    with open(killed / "metrics.jsonl", "a") as f:  # a line whose checkpoint never landed
        f.write(json.dumps({**metrics(killed)[-1], "epoch": torch.load(killed / "checkpoint.pt",
                                                                      weights_only=False)["epoch"]}) + "\n")
    assert train_main([*flags, "--out", str(killed), "--resume"]) == 0
    keys = ("epoch", "loss", "train_acc", "holdout_pgd")
    assert [{k: m[k] for k in keys} for m in metrics(straight)] == [{k: m[k] for k in keys} for m in metrics(killed)]
    summary = json.loads((killed / "summary.json").read_text())
    lines = metrics(killed)
    assert summary["images_per_s"] == pytest.approx(sum(m["images"] for m in lines) /
                                                    sum(m["epoch_seconds"] for m in lines))
    assert summary["train_seconds"] == pytest.approx(sum(m["epoch_seconds"] for m in lines))
    assert hidden(killed) == []


def test_resume_refuses_changed_settings_unless_allowed(tmp_path, tiny_flags, capsys):
    run = tmp_path / "run"
    flags = [*tiny_flags, "--method", "standard", "--eval-aa", "none", "--out", str(run)]
    assert train_main([*flags, "--epochs", "1"]) == 0
    assert train_main([*flags, "--epochs", "2", "--resume", "--lr", "0.01", "--eps", "3"]) == 2
    err = capsys.readouterr().err
    assert "lr is 0.01" in err and "eps is 3" in err and "--allow-change" in err
    assert train_main([*flags, "--epochs", "2", "--resume", "--lr", "0.01", "--allow-change"]) == 0
    change = json.loads((run / "config.json").read_text())["changes"][0]
    assert change["epoch"] == 1 and change["changed"]["lr"] == {"was": 1e-3, "now": 0.01}


def test_batch_larger_than_the_training_set(tmp_path, tiny_flags, capsys):
    assert train_main([*tiny_flags, "--epochs", "1", "--batch-size", "5000", "--out", str(tmp_path / "r")]) == 2
    assert "an epoch would have no step" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evaluate_refuses_other_data_unless_allowed(tmp_path, trained, capsys):
    layouts.cifar(tmp_path, "cifar10", per_batch=8)
    c10 = tmp_path / "c10.beton"
    assert write_main(["--dataset", "cifar10", "--root", str(tmp_path), "--split", "test", "--out", str(c10)]) == 0
    ckpt = str(trained[3] / "checkpoint.pt")
    assert evaluate_main(["--checkpoint", ckpt, "--val", str(c10), "--out", str(tmp_path / "e")]) == 2
    assert "dataset cifar10, trained on digits" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", ckpt, "--val", str(c10), "--out", str(tmp_path / "e"), "--allow-other-data",
                          "--eval-aa", "none", "--eval-eps", "2"]) == 0
    assert "other data" in (tmp_path / "e" / "robustness.md").read_text()


def test_stale_checkpoint_temporaries_are_removed(tmp_path, tiny_flags):
    run = tmp_path / "run"
    flags = [*tiny_flags, "--method", "standard", "--eval-aa", "none", "--out", str(run)]
    assert train_main([*flags, "--epochs", "1"]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run / f".checkpoint.pt.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"half a checkpoint")
    assert train_main([*flags, "--epochs", "2", "--resume"]) == 0
    assert not stale.exists()


# ---- flags -----------------------------------------------------------------------------------

def test_a_reader_that_goes_away_ends_the_output_quietly():
    """``python -m fastsat.reproduce --status | head -1``: once the reader has closed the pipe, the
    entry point stops as a pipe's writer does (141, no traceback)."""
    read, write = os.pipe()
    os.close(read)
    body = "import sys; from fastsat.errors import run_cli; sys.exit(run_cli(lambda: 'step: done\\n' * 20000))"
    try:
        p = subprocess.run([sys.executable, "-c", body], stdout=write, stderr=subprocess.PIPE,
                           cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr.decode()) == (141, "")


TRAIN_BAD = [["--lr", "-1"], ["--pad", "-3"], ["--width", "-1"], ["--width", "0"], ["--eval-eps", "abc"],
             ["--out", "__file__"], ["--holdout", "0"], ["--holdout", "99999"], ["--epochs", "0"],
             ["--holdout", "inf"], ["--width", "inf"], ["--lr", "inf"], ["--trades-beta", "inf"], ["--lr", "nan"],
             ["--seed", str(2 ** 70)], ["--pad", "1000"], ["--workers", "1000"], ["--eval-eps", "1e999"],
             ["--sat-schedule", "cosine"], ["--method", "sign", "--sal-mix"], ["--optimizer", "rmsprop"],
             ["--weight-decay", "-1"], ["--label-smoothing", "1"], ["--lr-schedule", "linear"], ["--warmup", "1"]]


@pytest.mark.parametrize("flags", TRAIN_BAD, ids=lambda f: " ".join(f))
def test_train_flags_fail_in_one_line(tmp_path, tiny_flags, capsys, flags):
    flags = [str(tmp_path / "file.txt") if f == "__file__" else f for f in flags]
    (tmp_path / "file.txt").write_text("x")
    out = [] if "--out" in flags else ["--out", str(tmp_path / "r")]
    assert train_main([*tiny_flags, "--epochs", "1", *out, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text", ["epochs = 1.5", 'epochs = "two"', "lr = -1", "lr = inf", "holdout = 1e999"])
def test_config_file_types_fail_in_one_line(tmp_path, tiny_flags, capsys, text):
    (tmp_path / "c.toml").write_text(text + "\n")
    assert train_main([*tiny_flags, "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and any(f in err[0] for f in ("--epochs", "--lr", "--holdout")), err


WRITE_BAD = [["--sal-param", "steps=abc"], ["--sal-param", "steps=0"], ["--sal-param", "threshold=7"],
             ["--sal-param", "samples=0"], ["--side", "0"], ["--root", "__file__"], ["--out", "__dir__"],
             ["--saliency", "mask", "--sal-param", "steps=3"]]


@pytest.mark.parametrize("flags", WRITE_BAD, ids=lambda f: " ".join(f))
def test_write_flags_fail_in_one_line(tmp_path, trained, capsys, flags):
    (tmp_path / "file.txt").write_text("x")
    flags = [str(tmp_path / "file.txt") if f == "__file__" else str(tmp_path) if f == "__dir__" else f for f in flags]
    teacher = ["--teacher", str(trained[3] / "checkpoint.pt")]
    saliency = [] if "--saliency" in flags else ["--saliency", {"steps": "ig", "threshold": "gradcam_pp_box",
                                                                "samples": "smoothgrad"}.get(
        next((f.split("=")[0] for f in flags if "=" in f), ""), "ig")]
    dataset = ["--dataset", "folder"] if "--root" in flags else ["--dataset", "digits"]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "x.beton")]
    assert write_main([*dataset, *out, *saliency, *teacher, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "x.beton").exists()


def _plan_worker(out: str, log: str) -> None:
    """One of several processes running the same plan: three steps, the third needs the first two."""
    from fastsat.schedule import Step, run_plan

    def step(name):
        def run():
            with open(log, "a") as f:
                f.write(f"start {name} {os.getpid()}\n")
            time.sleep(1.0)
            (Path(out) / name).write_text("done")
            with open(log, "a") as f:
                f.write(f"end {name}\n")
        return Step(name, ("a", "b") if name == "c" else (), (Path(out) / name).is_file, run)

    with open(log + ".ready", "a") as f:  # both processes start the plan together
        f.write("ready\n")
    while Path(log + ".ready").read_text().count("ready") < 2:
        time.sleep(0.01)
    run_plan(Path(out), [step("a"), step("b"), step("c")], poll=0.05)


def test_processes_sharing_a_plan_do_each_step_once(tmp_path):
    """Two processes on one folder: every step runs once, each in one process, after what it
    needs; a lock held by a killed process does not block the step forever."""
    import multiprocessing

    from fastsat.files import Claim

    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_plan_worker, args=(str(tmp_path), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    starts = [line.split()[1] for line in lines if line.startswith("start")]
    assert sorted(starts) == ["a", "b", "c"]
    start_c = next(i for i, line in enumerate(lines) if line.startswith("start c"))
    assert start_c > max(lines.index("end a"), lines.index("end b"))
    assert len({line.split()[2] for line in lines if line.startswith("start")}) == 2  # both processes worked
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fastsat.files import Claim; "
                               f"c = Claim({str(tmp_path / 'x')!r}); print(c.__enter__(), flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with Claim(tmp_path / "x") as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with Claim(tmp_path / "x") as mine:
        assert mine


def tree(folder: Path) -> dict:
    """Every file below ``folder`` with its size and modification time (what a command must not touch)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_saved_config_never_replaces_its_run(trained, tmp_path, capsys):
    """`train --config runs/x/config.json --seed 1` without --out: refused in one line, the run untouched,
    even when the run was made with --overwrite (which used to come back from the file and delete it)."""
    import shutil

    run = tmp_path / "x"
    shutil.copytree(trained[3], run)
    saved = json.loads((run / "config.json").read_text())
    saved["config"].update(overwrite=True, out=str(run))
    (run / "config.json").write_text(json.dumps(saved))
    before = tree(tmp_path)
    assert train_main(["--config", str(run / "config.json"), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--out" in err[0], err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("key", ["overwrite", "resume", "allow_change"])
def test_a_config_file_cannot_ask_for_what_a_command_asks(tmp_path, capsys, key):
    (tmp_path / "c.toml").write_text(f"epochs = 1\n{key} = true\n")
    assert train_main(["--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "command line" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
