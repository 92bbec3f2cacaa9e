"""Where the SAT kernel's time goes: variants of its random-number work, timed side by side (CUDA).

    python bench/kernel_variants.py [--out DIR]

Not product code: each variant keeps the kernel's grid, loads and stores, and changes only how the
per-element random word is made — Philox rounds (10, the product's; 7, still Crush-resistant per
Random123), draws per Philox call (4 × 32-bit words, the product's; or 8 × 16-bit halves), or none
(δ = −s: the bit unpacking and arithmetic alone). The convert-only pass is the floor.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, write_json  # noqa: E402
from bench.kernel import copy_bandwidth  # noqa: E402
from fastsat.kernels import bits as bitlayout  # noqa: E402
from fastsat.kernels import sat  # noqa: E402


@triton.jit
def _variant(out_ptr, x_ptr, bits_ptr, sample_elems, sample_bytes, eps, thresh, seed,
             MODE: tl.constexpr, ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: no RNG; 1: 4 × 32-bit words per Philox call; 2: 8 × 16-bit halves per call; 3: convert only
    n = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < sample_elems
    offs = n.to(tl.int64) * sample_elems + j
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.float32) * 0.003921568859368563
    if MODE == 3:
        y = x
    else:
        byte = tl.load(bits_ptr + n.to(tl.int64) * sample_bytes + (j >> 3), mask=mask, other=0).to(tl.int32)
        s_bit = (byte >> (j & 7)) & 1
        if MODE == 0:
            up = 1 - s_bit
        elif MODE == 1:
            g = (tl.program_id(1) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
            zero = g * 0
            r0, r1, r2, r3 = tl.philox(seed, g, zero + n.to(tl.uint32), zero, zero, ROUNDS)
            r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK,))
            up = tl.where((r >> 8).to(tl.int32) < thresh, (r & 1).to(tl.int32), 1 - s_bit)
        else:
            g = (tl.program_id(1) * (BLOCK // 8) + tl.arange(0, BLOCK // 8)).to(tl.uint32)
            zero = g * 0
            r0, r1, r2, r3 = tl.philox(seed, g, zero + n.to(tl.uint32), zero, zero, ROUNDS)
            m = 0xFFFF
            r = tl.reshape(tl.join(tl.join(tl.join(r0 & m, r2 & m), tl.join(r1 & m, r3 & m)),
                                   tl.join(tl.join(r0 >> 16, r2 >> 16), tl.join(r1 >> 16, r3 >> 16))), (BLOCK,))
            up = tl.where((r >> 1).to(tl.int32) < (thresh >> 9), (r & 1).to(tl.int32), 1 - s_bit)
        y = tl.minimum(tl.maximum(x + tl.where(up != 0, eps, -eps), 0.0), 1.0)
    tl.store(out_ptr + offs, y, mask=mask)


VARIANTS = {"product (4×32 bit, 10 rounds)": (1, 10), "4×32 bit, 7 rounds": (1, 7),
            "8×16 bit, 10 rounds": (2, 10), "8×16 bit, 7 rounds": (2, 7), "no RNG (δ = −s)": (0, 10),
            "convert only": (3, 10)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    ceiling = copy_bandwidth(device)
    rows, results = [], []
    for shape in [(512, 32, 32, 3), (256, 224, 224, 3)]:
        n, h, w, c = shape
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        b = bitlayout.pack_torch(torch.rand(n, h * w * c, device=device) < 0.5)
        out = torch.empty(shape, dtype=torch.float32, device=device)
        s = h * w * c
        block = sat.default_block(s)
        moved = x.numel() * 5 + b.numel()
        for name, (mode, rounds) in VARIANTS.items():
            launch = lambda: _variant[(n, triton.cdiv(s, block))](  # noqa: E731
                out, x, b, s, b.shape[1], 8 / 255, 1 << 23, 12345, MODE=mode, ROUNDS=rounds, BLOCK=block)
            us = triton.testing.do_bench(launch, warmup=25, rep=400, return_mode="median") * 1e3
            gbs = moved / us / 1e3
            results.append({"shape": list(shape), "variant": name, "us": us, "GB_per_s": gbs, "of_copy_bw": gbs / ceiling})
            rows.append(["x".join(map(str, shape)), name, us, gbs, gbs / ceiling])
    write_json(args.out / "kernel_variants.json", {"machine": machine(device), "copy_GB_per_s": ceiling,
                                                    "results": results})
    print(f"copy bandwidth {ceiling:.0f} GB/s")
    print(markdown_table(["shape", "variant", "µs", "GB/s", "of copy BW"], rows))


if __name__ == "__main__":
    main()
