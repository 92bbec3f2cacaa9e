"""SAT kernel throughput: Triton vs the best eager-torch composition vs the numba CPU path.

    python bench/kernel.py [--device cpu|cuda] [--quick] [--out DIR]

GB/s counts the bytes each pass must move: 1 B (uint8 in) + packed bits + output bytes per
element. The device's own copy bandwidth (read + write) is measured in the same run as the ceiling.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, time_fn, write_json  # noqa: E402
from fastsat.kernels import bits as bitlayout  # noqa: E402
from fastsat.kernels import sat  # noqa: E402

SIZES = {"cifar-512": (512, 32, 32, 3), "tiny-256": (256, 64, 64, 3), "imagenet-256": (256, 224, 224, 3)}


def sat_eager(x, bits, *, p, seed, granularity, eps=sat.EPS0, out_dtype=torch.float32):
    """Fewest eager ops for the same maths: one uniform draw r per element gives δ = +1 if r < p/2,
    −1 if p/2 ≤ r < p, else −s (the baseline a user would write; not bit-equal to the kernel)."""
    n, h, w, c = x.shape
    gen = torch.Generator(device=x.device).manual_seed(seed)
    r = torch.rand(x.shape, generator=gen, device=x.device)
    s = bitlayout.signs_torch(bits, (h, w, c), granularity)
    delta = torch.where(r < p, torch.where(r < p / 2, 1.0, -1.0), -s)
    return (x.float().div_(255).add_(delta, alpha=eps)).clamp_(0, 1).to(out_dtype).permute(0, 3, 1, 2)


def _convert_kernel():
    """Same grid and bytes as the SAT kernel, no maths: uint8 → float (x/255). The achievable
    ceiling for a 1-byte-in, 4-byte-out pass, measured beside the raw copy."""
    import triton
    import triton.language as tl

    @triton.jit
    def convert(out_ptr, x_ptr, sample_elems, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = j < sample_elems
        x = tl.load(x_ptr + n * sample_elems + j, mask=mask, other=0).to(tl.float32)
        tl.store(out_ptr + n * sample_elems + j, (x * 0.003921568859368563).to(out_ptr.dtype.element_ty), mask=mask)

    def run(x, b, *, p, seed, granularity, out_dtype=torch.float32, block=2048):
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        s = x[0].numel()
        convert[(x.shape[0], triton.cdiv(s, block))](out, x, s, BLOCK=block)
        return out

    return run


def copy_bandwidth(device, nbytes=1 << 28):
    a = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    b = torch.empty_like(a)
    t = device_time(lambda: b.copy_(a), device, quick=False)["median_s"]
    return 2 * nbytes / t / 1e9


def device_time(fn, device, quick):
    """CUDA: triton.testing.do_bench (device time between events, median); CPU: wall clock."""
    if device.type != "cuda":
        return time_fn(fn, device, warmup=3 if quick else 10, reps=5 if quick else 50)
    import triton.testing

    med, lo, hi = triton.testing.do_bench(fn, warmup=25, rep=100 if quick else 400, quantiles=[0.5, 0.05, 0.95])
    return {"median_s": med / 1e3, "p05_s": lo / 1e3, "p95_s": hi / 1e3, "rep_ms": 100 if quick else 400}


def providers(device):
    if device.type == "cuda":
        return {"triton": sat.sat_perturb_triton, "eager": sat_eager, "convert-only": _convert_kernel()}
    return {"cpu": sat.sat_perturb_cpu, "eager": sat_eager}


def run(device, quick=False, granularity="element", out_dtype=torch.float32, blocks=()):
    rows, results = [], []
    sizes = {"cifar-512": SIZES["cifar-512"]} if quick else SIZES
    ceiling = copy_bandwidth(device, 1 << (24 if quick else 28))
    for size_name, shape in sizes.items():
        n, h, w, c = shape
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        b = bitlayout.pack_torch(torch.rand(n, bitlayout.num_bits((h, w, c), granularity), device=device) < 0.5)
        moved = x.numel() * (1 + torch.finfo(out_dtype).bits // 8) + b.numel()
        variants = dict(providers(device))
        for block in blocks:
            for warps in (4, 8):
                variants[f"triton-b{block}-w{warps}"] = lambda *a, _b=block, _w=warps, **k: sat.sat_perturb_triton(
                    *a, block=_b, num_warps=_w, **k)
        timing = {}
        for name, f in variants.items():
            call = lambda f=f: f(x, b, p=0.5, seed=1, granularity=granularity, out_dtype=out_dtype)  # noqa: E731
            t = device_time(call, device, quick)
            timing[name] = t["median_s"]
            gbs = moved / t["median_s"] / 1e9
            results.append({"size": size_name, "shape": list(shape), "provider": name, **t,
                            "GB_per_s": gbs, "images_per_s": n / t["median_s"], "of_copy_bw": gbs / ceiling})
        for r in results[-len(variants):]:
            r["speedup_vs_eager"] = timing["eager"] / r["median_s"]
            rows.append([size_name, r["provider"], r["median_s"] * 1e3, r["GB_per_s"], r["of_copy_bw"],
                         r["images_per_s"], r["speedup_vs_eager"]])
    table = markdown_table(["size", "provider", "ms", "GB/s", "of copy BW", "images/s", "× eager"], rows)
    return {"copy_GB_per_s": ceiling, "granularity": granularity, "out_dtype": str(out_dtype),
            "results": results}, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--blocks", default="", help="extra Triton BLOCK sizes to time, comma-separated")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    blocks = [int(v) for v in args.blocks.split(",") if v] if device.type == "cuda" else []
    payload, table = run(device, args.quick, blocks=blocks)
    payload["machine"] = machine(device)
    write_json(args.out / "kernel.json", payload)
    print(f"SAT kernel on {payload['machine'].get('gpu', payload['machine'].get('cpu_model'))}; "
          f"copy bandwidth {payload['copy_GB_per_s']:.1f} GB/s (read + write)")
    print(table)
    return payload


if __name__ == "__main__":
    main()
