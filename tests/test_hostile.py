"""Files from someone else: checkpoints whose pickle would run code, betons damaged anywhere in
their structure (on both loaders), manifests of the wrong shape, and flags at their limits.
Every case ends in one ``error:`` line and exit code 2 — nothing runs that should not, nothing
crashes, nothing is written."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsat.beton import manifest_path, open_beton
from fastsat.errors import InputError
from fastsat.evaluate import main as evaluate_main
from fastsat.reader import FIELD_DESC, HEADER
from fastsat.saliency_grid import main as saliency_main
from fastsat.train import main as train_main
from fastsat.write_beton import main as write_main

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_error_line(capsys, *words) -> str:
    """The command's one ``error:`` line (progress bars aside), with no traceback."""
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in text, text[-3000:]
    assert all(w in err[0] for w in words), (words, err[0])
    return err[0]


@pytest.fixture
def evil(tmp_path, trained):
    """A genuine checkpoint with one extra entry that runs a command on load; the marker it would make."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(trained[3] / "checkpoint.pt", weights_only=True)
    ckpt["extra"] = Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    return path, marker


def checkpoint_commands(path: Path, tmp_path: Path, tiny_flags, digits) -> dict:
    """Every command that reads a checkpoint given to it, each writing under ``tmp_path``."""
    from fastsat.export import main as export_main

    return {
        "evaluate": lambda: evaluate_main(["--checkpoint", str(path), "--out", str(tmp_path / "ev")]),
        "export": lambda: export_main(["--checkpoint", str(path), "--out", str(tmp_path / "ex")]),
        "train --init": lambda: train_main([*tiny_flags, "--epochs", "1", "--init", str(path),
                                            "--out", str(tmp_path / "init")]),
        "write_beton --teacher": lambda: write_main(["--dataset", "digits", "--split", "test", "--out",
                                                     str(tmp_path / "t.beton"), "--saliency", "gbp",
                                                     "--teacher", str(path)]),
        "saliency_grid --teacher": lambda: saliency_main(["--teacher", str(path), "--beton", str(digits["test"]),
                                                          "--out", str(tmp_path / "g.png")]),
    }


def test_a_malicious_checkpoint_runs_nowhere(evil, trained, tiny_flags, digits, tmp_path, capsys):
    path, marker = evil
    calls = checkpoint_commands(path, tmp_path, tiny_flags, digits)
    for name, call in calls.items():
        assert call() == 2, name
        one_error_line(capsys, "refused", "more than data")
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    # --resume: the run folder's own checkpoint.pt replaced by the malicious one
    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    shutil.copy(path, run / "checkpoint.pt")
    assert train_main([*tiny_flags, "--epochs", "9", "--out", str(run), "--resume"]) == 2
    one_error_line(capsys, "refused")
    assert not marker.exists()


def _damaged(ckpt: dict, how: str) -> dict:
    """A copy of a genuine checkpoint with one part missing, mistyped or not fitting."""
    import copy

    c = copy.deepcopy(ckpt)
    kind, _, key = how.partition(":")
    if kind == "drop":
        c.pop(key)
    elif kind == "none":
        c[key] = None
    elif kind == "args":  # model_args.<key> damaged
        field, _, value = key.partition("=")
        if value:
            c["model_args"][field] = json.loads(value)
        else:
            c["model_args"].pop(field)
    elif kind == "shape":  # one tensor of another shape
        name = next(k for k, v in c["model_state"].items() if v.ndim == 4)
        c["model_state"][name] = torch.zeros(3, 3, 3, 3)
    return c


DAMAGES = ["drop:model_state", "drop:config", "drop:identity", "drop:model_args", "drop:epoch", "none:config",
           "none:identity", "args:image_shape", "args:mean=\"x\"", "args:std=[0.0]", "args:width=1000000",
           "args:num_classes=0", "args:name=\"resnet50\"", "shape:"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_checkpoint_is_one_line_and_nothing_written(how, trained, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save(_damaged(torch.load(trained[3] / "checkpoint.pt", weights_only=True), how), path)
    assert evaluate_main(["--checkpoint", str(path), "--out", str(tmp_path / "ev")]) == 2
    one_error_line(capsys, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_every_command_checks_a_checkpoint_before_writing(trained, tiny_flags, digits, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save(_damaged(torch.load(trained[3] / "checkpoint.pt", weights_only=True), "shape:"), path)
    calls = checkpoint_commands(path, tmp_path, tiny_flags, digits)
    for name, call in calls.items():
        assert call() == 2, name
        assert "weights do not fit" in one_error_line(capsys, str(path)), name
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"], name


def test_a_truncated_checkpoint_on_resume_is_one_line(trained, tiny_flags, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert train_main([*tiny_flags, "--epochs", "9", "--out", str(run), "--resume"]) == 2
    one_error_line(capsys, "checkpoint.pt", "truncated or damaged")


# --- damaged betons ----------------------------------------------------------------------------

def structure(path: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges of a beton's header, field table, metadata and allocation table."""
    raw = np.fromfile(path, np.uint8)
    header = raw[:HEADER.itemsize].view(HEADER)[0]
    fields_end = HEADER.itemsize + int(header["num_fields"]) * FIELD_DESC.itemsize
    return {"header": (0, HEADER.itemsize), "fields": (HEADER.itemsize, fields_end),
            "alloc": (int(header["alloc_table_ptr"]), len(raw))}


def mutations(path: Path, n: int, seed: int = 0):
    """(label, mutated bytes, manifest edits) — byte flips and overwrites in the structural parts,
    truncations with a matching manifest size, and values chosen to mislead (huge, negative)."""
    rng = np.random.default_rng(seed)
    raw = np.fromfile(path, np.uint8)
    parts = structure(path)
    for i in range(n):
        part = ["header", "fields", "alloc"][i % 3]
        lo, hi = parts[part]
        data = raw.copy()
        kind = rng.integers(4)
        if kind == 0:  # random bytes flipped
            at = rng.integers(lo, hi, size=rng.integers(1, 8))
            data[at] ^= rng.integers(1, 256, size=len(at)).astype(np.uint8)
        elif kind == 1:  # an 8-byte word set to a misleading value
            at = lo + 8 * rng.integers(0, max((hi - lo) // 8, 1))
            values = [2 ** 64 - 1, 2 ** 63, 2 ** 64 - 200, len(raw) * 4, 0, 2 ** 32]
            value = values[rng.integers(len(values))]
            data[at:at + 8] = np.frombuffer(np.uint64(value).tobytes(), np.uint8)
        elif kind == 2:  # truncated, the manifest saying so
            data = data[: rng.integers(1, len(raw))]
        else:  # a field name byte / header word set to 0xff
            at = rng.integers(lo, min(hi, lo + 64))
            data[at] = 0xFF
        yield f"{part}-{i}-{kind}", data


@pytest.mark.slow
def test_damaged_betons_are_refused_in_one_line_and_never_crash_a_loader(digits, tmp_path):
    """300 seeded mutations of the header, field table and allocation table: each is refused by the
    open (BetonError, one line) or, if it changed nothing structural, loads through ffcv's Loader
    in a child process — none may segfault, hang or raise anything else."""
    src = Path(digits["test"])
    manifest = json.loads(manifest_path(src).read_text())
    survivors = []
    for label, data in mutations(src, 300):
        path = tmp_path / f"{label}.beton"
        data.tofile(path)
        manifest_path(path).write_text(json.dumps({**manifest, "file_size": len(data)}))
        try:
            open_beton(path)
        except InputError as e:
            assert "\n" not in str(e), label
            path.unlink()
            manifest_path(path).unlink()
            continue
        survivors.append(str(path))
    refused = 300 - len(survivors)
    assert refused > 200, refused  # most structural changes are caught on open (padding bytes are not structure)
    code = ("import sys, torch; from fastsat.beton import open_beton; from fastsat.data import FFCVBatches\n"
            "for p in sys.argv[1:]:\n"
            "    batches = FFCVBatches(open_beton(p), ['sal'], batch_size=64, workers=1, device=torch.device('cpu'),"
            " train=False, seed=0)\n"
            "    for batch in batches.epoch(0):\n"
            "        pass\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, *survivors], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("file_size"), lambda m: m.pop("num_samples"), lambda m: m.pop("saliency"),
    lambda m: m.pop("mean"), lambda m: m.update(image_shape=[[32, 32], 3]), lambda m: m.update(mean="grey"),
    lambda m: m.update(mean=[0.5]), lambda m: m.update(std=[0, 0, 0]),
    lambda m: m.update(saliency={"sal": {"granularity": "voxel"}}), lambda m: m.update(num_classes="10"),
], ids=["no-file_size", "no-num_samples", "no-saliency", "no-mean", "2d-shape", "mean-str", "mean-len",
        "std-zero", "granularity", "classes-str"])
def test_damaged_manifests_are_one_line(digits, tmp_path, edit):
    path = tmp_path / "x.beton"
    shutil.copy(digits["test"], path)
    m = json.loads(manifest_path(digits["test"]).read_text())
    edit(m)
    manifest_path(path).write_text(json.dumps(m))
    with pytest.raises(InputError) as e:
        open_beton(path)
    assert "damaged manifest" in str(e.value) or "not a fastsat-beton" in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "null", "\"x\"", "{\"format\": 1}", "[" * 100_000 + "]" * 100_000])
def test_manifests_that_are_not_tables(digits, tmp_path, text):
    path = tmp_path / "x.beton"
    shutil.copy(digits["test"], path)
    manifest_path(path).write_text(text)
    with pytest.raises(InputError, match="not a fastsat-beton manifest"):
        open_beton(path)


def _word(data: np.ndarray, at: int, value: int, dtype="<u8") -> None:
    data[at:at + np.dtype(dtype).itemsize] = np.frombuffer(np.array(value, dtype).tobytes(), np.uint8)


def _named_damage(raw: np.ndarray, parts: dict, name: str) -> np.ndarray:
    """The damaged files reported against the FFCV path, by name."""
    data, (alloc, end) = raw.copy(), parts["alloc"]
    rng = np.random.default_rng(1)
    meta = parts["fields"][1] + 5  # sample 0's image data_ptr (packed: mode u1, width u2, height u2, data_ptr u8)
    if name == "alloc-500-flips":
        at = rng.integers(alloc, end, 500)
        data[at] ^= rng.integers(1, 256, 500).astype(np.uint8)
    elif name == "alloc-cut":
        data = data[: alloc + (end - alloc) // 2 + 5]
    elif name == "alloc-ptr-huge":
        _word(data, 16, 2 ** 62)
    elif name == "page-size-0":
        _word(data, 4, 0, "<u4")
    elif name == "name-0xff":
        data[HEADER.itemsize + 1] = 0xFF
    elif name == "dtype-json":
        data[HEADER.itemsize + 2 * FIELD_DESC.itemsize + 1 + 16 + 264 + 2] = ord("{")  # inside sal's dtype JSON
    elif name in ("num-fields-0", "num-fields-65535"):
        _word(data, 2, 0 if name.endswith("0") else 65535, "<u2")
    elif name == "truncated-100":
        data = data[:100]
    elif name == "image-ptr-top-ff":
        data[meta + 6:meta + 8] = 0xFF
    elif name in ("image-ptr-minus-1", "image-ptr-minus-200"):
        _word(data, meta, -1 if name.endswith("-1") else -200, "<i8")
    return data


@pytest.mark.parametrize("name", ["alloc-500-flips", "alloc-cut", "alloc-ptr-huge", "page-size-0", "name-0xff",
                                  "dtype-json", "num-fields-0", "num-fields-65535", "truncated-100",
                                  "image-ptr-top-ff", "image-ptr-minus-1", "image-ptr-minus-200"])
def test_named_damage_is_refused_on_open_even_with_verify(digits, tmp_path, name, capsys, tiny_flags):
    src = Path(digits["test"])
    data = _named_damage(np.fromfile(src, np.uint8), structure(src), name)
    path = tmp_path / "x.beton"
    data.tofile(path)
    manifest = json.loads(manifest_path(src).read_text())
    manifest_path(path).write_text(json.dumps({**manifest, "file_size": len(data)}))
    with pytest.raises(InputError) as e:
        open_beton(path, verify=True)
    assert "\n" not in str(e.value)
    if name == "alloc-500-flips":  # the case that crashed the FFCV loader with a segfault after --verify
        flags = [*tiny_flags, "--train", str(path), "--val", str(digits["test"]), "--verify", "--workers", "1",
                 "--epochs", "1", "--out", str(tmp_path / "run")]
        assert train_main(flags) == 2
        one_error_line(capsys, "damaged")
        assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_training_in_one_line(tmp_path, tiny_flags, capsys):
    out = tmp_path / "r"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "3", "--lr", "1e30", "--out", str(out)]) == 2
    line = one_error_line(capsys, "epoch 0, step", "not finite")
    assert "no checkpoint was written" in line and not (out / "checkpoint.pt").exists()


def test_training_refuses_a_test_beton_of_other_data_unless_allowed(tmp_path, tiny_flags, capsys):
    from tests import layouts

    layouts.cifar(tmp_path / "c", "cifar10", per_batch=8)
    c10 = tmp_path / "c10.beton"
    assert write_main(["--dataset", "cifar10", "--root", str(tmp_path / "c"), "--split", "test", "--out", str(c10)]) == 0
    capsys.readouterr()
    flags = [*tiny_flags, "--epochs", "1", "--val", str(c10), "--eval-limit", "0"]
    assert train_main([*flags, "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "dataset cifar10, trained on digits", "--allow-other-data")
    assert not (tmp_path / "a").exists()
    assert train_main([*flags, "--out", str(tmp_path / "b"), "--allow-other-data"]) == 0
    report = json.loads((tmp_path / "b" / "robustness.json").read_text())
    assert "dataset cifar10" in report["other_data"]


def test_outputs_are_checked_before_any_work(tmp_path, trained, digits, capsys):
    ckpt = str(trained[3] / "checkpoint.pt")
    (tmp_path / "file").write_text("x")
    assert evaluate_main(["--checkpoint", ckpt, "--out", str(tmp_path / "file")]) == 2
    one_error_line(capsys, "is a file")
    for out in (tmp_path / "missing" / "g.png", tmp_path / "g.txt", tmp_path / "g.beton"):
        assert saliency_main(["--teacher", ckpt, "--beton", str(digits["test"]), "--out", str(out)]) == 2
        one_error_line(capsys, ".png file in an existing folder")


def test_an_empty_test_beton_is_refused(tmp_path, trained, digits, capsys):
    """A beton of no samples (fastsat never writes one; another tool may): one line, before any work."""
    from fastsat.reader import INT, NDARRAY, RGB, BetonReader, write_direct

    empty = tmp_path / "empty.beton"
    write_direct(empty, {"image": (RGB, (32, 32, 3)), "label": (INT, ()), "sal": (NDARRAY, (128,))}, [], 1 << 21)
    m = json.loads(manifest_path(digits["test"]).read_text())
    m.update(num_samples=0, file_size=empty.stat().st_size, content_blake2b=BetonReader(empty).content_hash())
    manifest_path(empty).write_text(json.dumps(m))
    assert open_beton(empty).num_samples == 0
    ckpt = str(trained[3] / "checkpoint.pt")
    assert evaluate_main(["--checkpoint", ckpt, "--val", str(empty), "--out", str(tmp_path / "e")]) == 2
    one_error_line(capsys, "no samples")
    assert not (tmp_path / "e").exists()


def test_ctrl_c_in_reproduce_is_one_line_and_exit_130(tmp_path):
    """Interrupted while it writes its first beton: "error: interrupted", exit 130, nothing else."""
    from tests.test_faults import interrupt
    from tests.layouts import write_idx

    write_idx(tmp_path / "fm", n_train=40_000, n_test=20)
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "fastsat.reproduce", "--dataset", "fashion-mnist", "--root",
                             str(tmp_path / "fm"), "--out", str(out), "--budget", "quick", "--device", "cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = interrupt(proc, lambda: any(p.name.startswith(".train.beton.tmp") for p in (out / "data").glob(".*")),
                    seconds=120)
    assert proc.returncode == 130, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == ["error: interrupted"], err[-2000:]
    assert "Traceback" not in err and not (out / "data" / "train.beton").exists()


def test_an_interrupted_replacement_never_pairs_a_new_beton_with_the_old_manifest(digits, tmp_path, monkeypatch):
    import fastsat.beton as beton

    out = tmp_path / "x.beton"
    shutil.copy(digits["test"], out)
    shutil.copy(manifest_path(digits["test"]), manifest_path(out))
    real = os.replace

    def killed_before_the_manifest(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt  # the moment between the two renames
        real(src, dst)
    monkeypatch.setattr(beton.os, "replace", killed_before_the_manifest)
    samples = __import__("fastsat.writers", fromlist=["open_writer"]).open_writer("digits", "train")
    with pytest.raises(KeyboardInterrupt):
        beton.write_beton(samples, samples.source, out, overwrite=True, writer="direct")
    with pytest.raises(InputError, match="manifest .* is missing"):
        open_beton(out)


def test_damaged_sample_bytes_open_and_train_but_verify_catches_them(digits, tmp_path):
    """Mutations of the data pages are no structural damage: the file opens (and would train);
    --verify's content hash is what catches them."""
    src = Path(digits["test"])
    raw = np.fromfile(src, np.uint8)
    page_start, alloc = structure(src)["fields"][1], structure(src)["alloc"][0]
    rng = np.random.default_rng(7)
    from fastsat.reader import BetonReader

    stored, hit = json.loads(manifest_path(src).read_text())["content_blake2b"], 0
    for trial in range(20):
        data = raw.copy()
        at = rng.integers(page_start + 4096, alloc, size=rng.integers(1, 50))
        data[at] ^= rng.integers(1, 256, size=len(at)).astype(np.uint8)
        path = tmp_path / f"d{trial}.beton"
        data.tofile(path)
        shutil.copy(manifest_path(src), manifest_path(path))
        open_beton(path)  # structurally sound: opens without --verify
        if BetonReader(path).content_hash() != stored:  # some flipped byte belongs to a sample
            hit += 1
            with pytest.raises(InputError, match="content hash"):
                open_beton(path, verify=True)
    assert hit >= 10, hit  # most trials damage sample bytes (the rest hit page padding)


@pytest.mark.parametrize("dataset,file", [("cifar10", "test_batch"), ("cifar10", "batches.meta"),
                                          ("cifar100", "test"), ("cifar100", "meta")])
@pytest.mark.parametrize("protocol", [2, 5])
def test_a_crafted_cifar_file_runs_no_code(tmp_path, capsys, dataset, file, protocol):
    """CIFAR's official files are pickles: one that would call anything is refused in one line before
    anything of it runs, and no beton is written (plain ``pickle.load`` ran the payload, exit 0)."""
    import pickle

    from tests import layouts

    layouts.cifar(tmp_path / "root", dataset)
    folder = next((tmp_path / "root").iterdir())
    data = pickle.loads((folder / file).read_bytes())
    marker = tmp_path / "ran"
    data[b"extra"] = Payload(marker)
    (folder / file).write_bytes(pickle.dumps(data, protocol=protocol))
    out = tmp_path / "x.beton"
    assert write_main(["--dataset", dataset, "--split", "test", "--root", str(tmp_path / "root"), "--out", str(out),
                       "--workers", "2"]) == 2
    line = one_error_line(capsys)
    assert "posix.system" in line and "refused" in line and str(folder / file) in line
    assert not marker.exists() and not out.exists() and not manifest_path(out).exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol):
    """The restricted unpickler admits what numpy writes for an array under each pickle protocol."""
    import pickle

    from fastsat.writers.cifar import _unpickle

    arr = np.arange(24, dtype=np.uint8).reshape(2, 12)
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": arr, b"labels": [1, 2], b"batch_label": b"x"}, protocol=protocol))
    got = _unpickle(tmp_path / "b")
    assert np.array_equal(got[b"data"], arr) and got[b"labels"] == [1, 2]


def _binary_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.json"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _huge_image_folder(tmp_path: Path) -> Path:
    """A folder layout holding one 400-megapixel image (a 1-bit PNG, small on disk)."""
    from PIL import Image

    (tmp_path / "huge" / "a").mkdir(parents=True)
    Image.new("1", (20_000, 20_000)).save(tmp_path / "huge" / "a" / "x.png")
    return tmp_path / "huge"


FLAGS = {  # a request refused before anything is made: the command, the words of its one line
    "train --width 1e6": (lambda t, flags: train_main([*flags, "--width", "1000000", "--out", str(t / "o")]),
                          "--width"),
    "train --device meta": (lambda t, flags: train_main([*flags, "--device", "meta", "--out", str(t / "o")]),
                            "--device 'meta'"),
    "train --config binary": (lambda t, flags: train_main(["--config", str(_binary_config(t)), "--out", str(t / "o")]),
                              "not text"),
    "write_beton --side 1e5": (lambda t, flags: write_main(["--dataset", "folder", "--root", str(t), "--side",
                                                            "100000", "--out", str(t / "o.beton")]), "at most --side"),
    "write_beton huge image": (lambda t, flags: write_main(["--dataset", "folder", "--root", str(_huge_image_folder(t)),
                                                            "--out", str(t / "o.beton")]), "too large to decode"),
    "reproduce --threads -1": (lambda t, flags: _reproduce(["--out", str(t / "o"), "--threads", "-1"]), "--threads"),
    "reproduce --device meta": (lambda t, flags: _reproduce(["--out", str(t / "o"), "--device", "meta"]), "--device"),
    "reproduce --out file": (lambda t, flags: _reproduce(["--out", str(_binary_config(t))]), "is a file"),
    "reproduce --root missing": (lambda t, flags: _reproduce(["--out", str(t / "o"), "--root", str(t / "nowhere")]),
                                 "--root"),
    "demo --epochs 0": (lambda t, flags: _demo(["--data", str(t / "o"), "--out", str(t / "o" / "runs"),
                                                "--epochs", "0"]), "--epochs"),
}


def _demo(argv):
    from fastsat.demo import main

    return main(argv)


def _reproduce(argv):
    from fastsat.reproduce import main

    return main(argv)


@pytest.mark.parametrize("case", FLAGS)
def test_requests_out_of_range_are_one_line_and_nothing_made(case, tmp_path, tiny_flags, capsys):
    call, words = FLAGS[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    made_inputs = call(tmp_path, tiny_flags)
    assert made_inputs == 2
    one_error_line(capsys, words)
    after = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert not any(p.parts[0] in ("o", "o.beton") for p in after - set(before)), sorted(after)


def test_a_second_process_on_a_run_folder_is_refused(trained, tiny_flags, tmp_path, capsys):
    """While one process writes a run folder (it holds the folder's claim), another train on the same
    --out is refused in one line, whatever it asks (--overwrite, --resume), and the folder is untouched."""
    from fastsat.files import Claim

    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with Claim(run) as mine:
        assert mine
        for extra in (["--overwrite"], ["--resume", "--epochs", "9"]):
            assert train_main([*tiny_flags, "--method", "standard", "--out", str(run), *extra]) == 2
            one_error_line(capsys, "being written by another process")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.parametrize("case", ["foreign file", "foreign folder", "symlink"])
def test_overwrite_replaces_only_what_is_provably_a_run(case, trained, tiny_flags, tmp_path, capsys):
    """A folder with a run's config.json beside files no run writes, or a symbolic link to a run, is
    not replaced by --overwrite: one line, and nothing moved or left behind."""
    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    out = run
    if case == "foreign file":
        (run / "thesis.tex").write_text("years of work")
    elif case == "foreign folder":
        (run / "data").mkdir()
        (run / "data" / "x.npy").write_bytes(b"0")
    else:
        out = tmp_path / "link"
        out.symlink_to(run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "1", "--out", str(out), "--overwrite"]) == 2
    one_error_line(capsys, "--overwrite")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("file,command", [("config.json", "resume"), ("metrics.jsonl", "resume"),
                                          ("summary.json", "export"), ("robustness.json", "export"),
                                          ("config.json", "overwrite")])
def test_a_run_with_a_damaged_file_is_one_line(file, command, trained, tiny_flags, tmp_path, capsys):
    from fastsat.export import main as export_main

    run = tmp_path / "run"
    shutil.copytree(trained[3], run)
    (run / "summary.json").write_text(json.dumps({"train_seconds": 1.0, "images_per_s": 1.0}))
    (run / file).write_bytes(b"{\"attacks\": [1, 2" if file != "metrics.jsonl" else b"{\"epoch\": 0}\n\xff\xfe{")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    same = ["--method", "standard", "--width", "0.25", "--lr", "3e-3", "--eval-eps", "1", "--select", "last"]
    calls = {"resume": lambda: train_main([*tiny_flags, *same, "--epochs", "9", "--out", str(run), "--resume"]),
             "export": lambda: export_main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "e")]),
             "overwrite": lambda: train_main([*tiny_flags, "--epochs", "1", "--out", str(run), "--overwrite"])}
    rc = calls[command]()
    if command == "overwrite":  # a run whose config is damaged is not provably a run: never replaced
        assert rc == 2 and "not a fastsat run" in one_error_line(capsys)
    else:
        assert rc == 2 and file in one_error_line(capsys, "damaged")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_damaged_study_record_is_one_line(tmp_path, capsys):
    from fastsat.reproduce import main

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "reproduce.json").write_text("[1, 2, 3]")
    assert main(["--out", str(tmp_path / "r"), "--status"]) == 2
    one_error_line(capsys, "reproduce.json", "damaged")


@pytest.mark.parametrize("module", ["fastsat.train", "fastsat.evaluate", "fastsat.write_beton"])
def test_ctrl_c_while_a_command_loads_its_libraries_is_one_line(module):
    """Ctrl-C during the imports of a command (torch, timm, ffcv: seconds): 130 and the one line.
    Sent at growing delays until one lands before the command has loaded (it then prints --help)."""
    codes = []
    for delay in (0.4, 0.8, 1.2, 1.6):
        proc = subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        import time

        time.sleep(delay)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err[-2000:]
        codes.append(proc.returncode)
        if proc.returncode == 130:
            assert err.strip().splitlines() == ["error: interrupted"], err
            break
    assert 130 in codes, codes


@pytest.mark.parametrize("limit,what", [(4_000, "could not write"), (200_000, "could not save")])
def test_a_full_disk_in_a_new_run_is_one_line_and_leaves_nothing(limit, what, tiny_flags, tmp_path):
    """Files capped (RLIMIT_FSIZE, as a full disk): a new run that cannot write its config or its first
    checkpoint ends in one line, exit 2, and leaves no folder, lock or temporary."""
    from tests.test_faults import start

    proc = start(["fastsat.train", *tiny_flags, "--epochs", "1", "--out", str(tmp_path / "run")], limit_bytes=limit)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert what in lines[0] and "full disk" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_grading_is_one_line_of_its_own(trained, tmp_path):
    """Interrupted while it grades (a progress bar on screen): the bar is closed, then the one line
    on a line of its own, 130, and no report."""
    from tests.test_faults import interrupt, start

    proc = start(["fastsat.evaluate", "--checkpoint", str(trained[3] / "checkpoint.pt"), "--out", str(tmp_path / "e"),
                  "--eval-limit", "0", "--eval-aa", "standard"])
    err = interrupt(proc, lambda: True, delay=12)
    assert proc.returncode == 130, err[-2000:]
    assert "error: interrupted" in err.splitlines() and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "e" / "robustness.json").exists()


def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(trained, tmp_path):
    from tests.test_faults import start

    proc = start(["fastsat.export", "--checkpoint", str(trained[3] / "best.pt"), "--out", str(tmp_path / "ex")],
                 limit_bytes=20_000)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "full disk" in lines[0] and list(tmp_path.iterdir()) == []
