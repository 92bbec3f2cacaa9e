"""Teacher maps in chunks (``fastsat.teacher_maps``): one beton whatever the chunking and the number
of ranks, a write interrupted or failed at any point goes on from its finished chunks to the same
beton, a chunk folder of another request is refused, and memory is bounded by the chunk."""
import json
import signal
import subprocess
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsat.beton import open_beton
from fastsat.distributed import run_ranks
from fastsat.teacher_maps import chunk_folder, claim, compute_chunks, request
from fastsat.write_beton import main as write_main, write_dataset
from fastsat.writers import open_writer

ROOT = Path(__file__).resolve().parents[1]
SLOW = """
import sys, time
from fastsat import saliency

@saliency.register_saliency("test_only_slow", granularity="pixel", needs_teacher=False, description="slow")
def slow(teacher, x, y):
    time.sleep(0.3)
    return x.mean(1) > 0.5

from fastsat.write_beton import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def teacher(trained):
    return trained[3] / "checkpoint.pt"


def content(path: Path) -> str:
    return open_beton(path).manifest["content_blake2b"]


def test_chunks_and_ranks_give_the_beton_of_one_pass(tmp_path, teacher):
    """Chunks of 64 or 96 samples (teacher batches of 32), in one process or shared by two ranks:
    one content hash, and no chunk folder left."""
    write = partial(write_dataset, saliency="gbp", teacher=teacher, saliency2="mask", sal_batch=32, writer="direct",
                    progress=False)
    one = write("digits", "test", tmp_path / "one.beton", chunk=64)
    other = write("digits", "test", tmp_path / "other.beton", chunk=96)
    two = run_ranks(2, partial(write, chunk=64), "digits", "test", tmp_path / "two.beton")
    assert one.manifest["content_blake2b"] == other.manifest["content_blake2b"] == two.manifest["content_blake2b"]
    assert one.manifest["saliency"]["sal2"]["source"] == {"method": "mask", "equation": "Eq. 10"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.beton{j}" for n in ("one", "other", "two") for j in ("", ".json"))


def slow_write(out: Path, *extra: str, limit_bytes: int | None = None) -> subprocess.Popen:
    def cap():
        if limit_bytes is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return subprocess.Popen([sys.executable, "-c", SLOW, "--dataset", "digits", "--split", "test", "--out", str(out),
                             "--saliency", "test_only_slow", "--sal-batch", "32", "--chunk", "64", "--writer", "direct",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=cap)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.communicate()
    return proc.returncode, err


def test_ctrl_c_keeps_the_chunks_and_the_same_command_finishes_the_same_beton(tmp_path):
    reference = tmp_path / "ref.beton"
    assert finish(slow_write(reference))[0] == 0
    out = tmp_path / "x.beton"
    proc = slow_write(out)
    chunks = chunk_folder(out)
    deadline = time.monotonic() + 60
    while not (chunks / "chunk-000001.npz").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130 and err.strip().splitlines()[-1] == "error: interrupted"
    kept = sorted(p.name for p in chunks.glob("chunk-*.npz"))
    assert 2 <= len(kept) < 6 and not out.exists()  # 360 samples: 6 chunks
    rc, err = finish(slow_write(out))
    assert rc == 0, err
    assert content(out) == content(reference) and not chunks.exists()


def test_a_full_disk_at_the_write_keeps_every_chunk(tmp_path):
    out = tmp_path / "x.beton"
    rc, err = finish(slow_write(out, limit_bytes=64 << 10))  # a chunk is ~8 KB, the beton ~1.2 MB
    assert rc == 2 and err.count("error:") == 1 and "full disk" in err, err[-1000:]
    assert len(list(chunk_folder(out).glob("chunk-*.npz"))) == 6 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert finish(slow_write(out))[0] == 0 and not chunk_folder(out).exists()


def test_chunks_of_another_request_are_refused(tmp_path, teacher, capsys):
    out = tmp_path / "x.beton"
    samples = open_writer("digits", "test")
    plan = [("grad_sign", teacher, {})]
    other = request(samples.source, len(samples), plan, {teacher: "0" * 64}, {}, 32, 64, torch.device("cpu"))
    claim(chunk_folder(out), other)
    rc = write_main(["--dataset", "digits", "--split", "test", "--out", str(out), "--saliency", "gbp",
                     "--teacher", str(teacher), "--sal-batch", "32", "--chunk", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "holds chunks of another request (maps:" in err
    assert json.loads((chunk_folder(out) / "request.json").read_text()) == other and not out.exists()
    rc = write_main(["--dataset", "digits", "--split", "test", "--out", str(tmp_path / "y.beton"), "--saliency", "gbp",
                     "--teacher", str(teacher), "--sal-batch", "32", "--chunk", "48"])
    assert rc == 2 and "--chunk must be a positive multiple of --sal-batch (32)" in capsys.readouterr().err


class First:
    """The first ``n`` samples of a layout."""

    def __init__(self, samples, n: int):
        self.samples, self.n, self.source = samples, n, samples.source

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.samples[i]


def test_memory_is_bounded_by_the_chunk_not_the_split(tmp_path, teacher):
    """numpy's peak while teacher maps are computed and stored in chunks of 32 is the same for 256 and
    for 1,437 samples, and far below one whole-split array (tracemalloc sees numpy's allocations, not
    torch's; a first pass takes the one-off allocations)."""
    from fastsat.runs import load_checkpoint

    samples = open_writer("digits", "train")
    ckpt = load_checkpoint(teacher, torch.device("cpu"))
    plan = [("gbp", teacher, {})]
    peaks = {}
    for n in (64, 256, len(samples)):
        part = First(samples, n)
        req = request(part.source, n, plan, {teacher: "t"}, {}, 32, 32, torch.device("cpu"))
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        tracemalloc.start()
        compute_chunks(part, plan, {teacher: ckpt}, req, folder, torch.device("cpu"), progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    split_bytes = len(samples) * int(np.prod(samples.source.image_shape))
    assert peaks[len(samples)] < 1.2 * peaks[256] and peaks[len(samples)] < split_bytes / 4, (peaks, split_bytes)


def test_a_failing_rank_stops_every_rank_and_publishes_nothing(tmp_path):
    """Two ranks, a broken image in rank 1's chunk: one line, no beton, rank 0's finished chunk kept."""
    from PIL import Image

    from fastsat.errors import InputError
    from fastsat.models import build_model
    from fastsat.runs import save_checkpoint

    rng = np.random.default_rng(0)
    for i in range(64):
        folder = tmp_path / "imgs" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (tmp_path / "imgs" / "c1" / "41.png").write_bytes(b"not a png")  # sample 52 of 64: chunk 1, rank 1's
    args = {"name": "resnet10", "width": 0.125, "num_classes": 2, "mean": [0.5] * 3, "std": [0.25] * 3,
            "image_shape": [8, 8, 3]}
    net = build_model("resnet10", 2, args["mean"], args["std"], 0.125)
    save_checkpoint(tmp_path / "t.pt", {"config": {"model": "resnet10", "width": 0.125, "method": "standard"},
                                        "model_args": args, "identity": {"dataset": "folder"}, "epoch": 0,
                                        "model_state": net.state_dict()})
    out = tmp_path / "x.beton"
    write = partial(write_dataset, saliency="gbp", teacher=tmp_path / "t.pt", sal_batch=32, chunk=32, writer="direct",
                    progress=False, root=tmp_path / "imgs", side=8)
    with pytest.raises(InputError, match="a rank failed, every rank stopped: .*unreadable image"):
        run_ranks(2, write, "folder", "train", out)
    assert not out.exists() and [p.name for p in chunk_folder(out).glob("chunk-*")] == ["chunk-000000.npz"]
