"""Same-process A/B of the flash backward with autotuning on: pointer vs TMA inner-loop loads.

`ci/flash_tma_check.py` compares the two load paths at pinned configs (bitwise and speed);
this script lets the autotuner pick each path's configs, as a user's call does, and alternates
the paths twice (pointer, TMA, pointer, TMA) in one process. bf16, varlen lens [1024, 8192,
2048, 4096, 1024, 3072], H = 16, D in 72, 80, 128; torch.autograd.grad of `varlen_attention`
(dq, dk, dv), do_bench medians, TFLOP/s = 2.5 * 4 * sum(L^2) * H * D / t. The two paths may
autotune to different configs, so their gradients need not be bitwise equal here.

    PYTHONPATH=. python3 ci/flash_bwd_tma_ab.py     # on a CUDA machine, ~90 s cold
"""

from __future__ import annotations

import itertools
import json
import os

import torch
from triton.testing import do_bench

from attnverify.kernels import _flash
from attnverify.kernels.varlen import varlen_attention

LENS = (1024, 8192, 2048, 4096, 1024, 3072)
HEADS = 16


def main() -> None:
    os.environ["ATTNVERIFY_AUTOTUNE"] = "1"
    cu = torch.tensor([0, *itertools.accumulate(LENS)], dtype=torch.int32, device="cuda")
    for d in (72, 80, 128):
        g = torch.Generator(device="cuda").manual_seed(d)
        q, k, v = (
            torch.randn(
                sum(LENS), HEADS, d, device="cuda", dtype=torch.bfloat16, generator=g
            ).requires_grad_()
            for _ in range(3)
        )
        flops = 2.5 * 4 * sum(n * n for n in LENS) * HEADS * d
        row: dict = {"D": d}
        for tma in ("0", "1", "0", "1"):
            os.environ[_flash.TMA_ENV] = tma
            out = varlen_attention(q, k, v, cu, cu)
            do = torch.randn_like(out)

            def grad(out=out, do=do, leaves=(q, k, v)) -> tuple:
                return torch.autograd.grad(out, leaves, do, retain_graph=True)

            grad()
            ms = do_bench(grad, warmup=20, rep=200, return_mode="median")
            row.setdefault(f"tflops_tma{tma}", []).append(round(flops / ms * 1e-9, 1))
            row[f"configs_tma{tma}"] = [str(x.best_config) for x in (_flash._dkdv, _flash._dq)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
