"""Where the varlen public call's host time goes on a GPU (issue #5): the public forward against
the kernel alone, the public call with the cu_seqlens read stood in by its memoized result
(no device sync), and a torch.profiler trace of a few calls (CPU op durations, GPU idle gaps
between attention kernels).

    PYTHONPATH=. python3 ci/varlen_host_profile.py --out OUT_DIR [--head-dims 72,128]

Shape: the #5 bench batch (lens 1024, 8192, 2048, 4096, 1024, 3072), Hq = Hk = 16, bf16,
non-causal. Writes OUT_DIR/varlen_host_profile.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable

import torch
import triton

from attnverify.kernels import varlen as varlen_module
from attnverify.kernels._flash_offline import record_launches
from attnverify.kernels.varlen import varlen_attention

LENS = [1024, 8192, 2048, 4096, 1024, 3072]


def ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def profile_calls(call: Callable[[], object], count: int) -> dict:
    """CPU time of the heaviest host ops and the GPU gaps between consecutive attention kernels
    over `count` back-to-back calls."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(count):
            call()
        torch.cuda.synchronize()
    cpu = defaultdict(float)
    kernels = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU:
            cpu[e.name] += e.cpu_time_total / count
        elif "flash_fwd" in e.name:
            kernels.append((e.time_range.start, e.time_range.end))
    kernels.sort()
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(kernels)]
    top = dict(sorted(cpu.items(), key=lambda kv: -kv[1])[:25])
    return {
        "attention kernels seen": len(kernels),
        "kernel us (mean)": sum(b - a for a, b in kernels) / max(len(kernels), 1),
        "gap between attention kernels us (each)": gaps,
        "cpu us per call, top ops (inclusive)": top,
    }


def measure(d: int, cu: torch.Tensor) -> dict:
    """The timings and profiles of one head dim."""
    t = sum(LENS)
    q, k, v = (torch.randn(t, 16, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * sum(n * n for n in LENS) * 16 * d

    def public() -> object:
        return varlen_attention(q, k, v, cu, cu)

    public()
    launch = record_launches(public)[-1]
    kernel, grid, kwargs = launch.kernel, launch.grid, launch.kwargs
    row = {"D": d}
    row["public TFLOP/s"] = flops / ms(public) * 1e-9
    row["kernel only TFLOP/s"] = flops / ms(lambda: kernel[grid](**kwargs)) * 1e-9
    real = varlen_module.check_varlen_values
    varlen_module.check_varlen_values = functools.cache(real)  # no read after the first
    try:
        public()
        row["public, cu_seqlens read memoized TFLOP/s"] = flops / ms(public) * 1e-9
        row["profile, read memoized"] = profile_calls(public, 5)
    finally:
        varlen_module.check_varlen_values = real
    row["profile, public"] = profile_calls(public, 5)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--head-dims", default="72,128")
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(), "lens": LENS, "rows": []}
    cu = torch.tensor([0, *itertools.accumulate(LENS)], dtype=torch.int32, device="cuda")
    for d in (int(x) for x in args.head_dims.split(",")):
        results["rows"].append(measure(d, cu))
        print(json.dumps(results["rows"][-1], indent=1), flush=True)
    with open(os.path.join(args.out, "varlen_host_profile.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
