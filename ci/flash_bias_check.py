"""Device A/B of the gqa bias forward and backward (issue #6): the grid with query heads
fastest (what the library does for a bias shared by heads, `_flash._heads_first`) or blocks
fastest, autotuned and per pinned forward config, in one process.

    PYTHONPATH=. python3 ci/flash_bias_check.py --out OUT_DIR [--sections correctness,bench]
        [--configs 64,8,2;64,8,3] [--dry]

correctness: per variant, out / lse / dq / dk / dv / dbias bitwise equal to the
blocks-first grid at bench-like shapes (B=1, Hq=16, Hk 16 / 4, D=128, L=2048, bias
(1, 1, L, L) bf16), and the forward's max abs error against the float64 oracle on 256 rows (for the log: the
harness, `attnverify verify`, judges accuracy).
bench: B=1, Hq=16, Hk 16 / 4, D=128, L=8192 bf16, non-causal, (1, 1, L, L) bf16 bias:
the forward per variant (autotuned and each pinned config of --configs), the backward with
dbias per variant (autotuned), SDPA cuDNN and efficient with the same bias, in TFLOP/s.
--dry (with TRITON_INTERPRET=1): the correctness section at L=128 in float16 on the CPU
(argument plumbing; no timings).
Variants are made by replacing `_flash._heads_first` (a fixed answer). Writes
OUT_DIR/flash_bias_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from attnverify.kernels import _flash
from attnverify.kernels.gqa import gqa_attention
from attnverify.reference.gqa import gqa_attention as gqa_oracle

VARIANTS = {"blocks-first": False, "heads-first": True}  # name -> heads fastest
REAL_HEADS_FIRST = _flash._heads_first


def log(*args: object) -> None:
    print(*args, flush=True)


@contextmanager
def variant(name: str) -> Iterator[None]:
    """The grid order forced to `name` (see VARIANTS) inside the block."""
    _flash._heads_first = lambda *a, **k: VARIANTS[name]
    try:
        yield
    finally:
        _flash._heads_first = REAL_HEADS_FIRST


def inputs(hk: int, length: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(hk * 7 + length)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, generator=g)

    return {
        "q": randn(1, 16, length, 128),
        "k": randn(1, hk, length, 128),
        "v": randn(1, hk, length, 128),
        "bias": randn(1, 1, length, length) * 0.5,
    }


def forward_backward(x: dict[str, torch.Tensor], do: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
    out, lse = gqa_attention(**leaves, return_lse=True)
    grads = torch.autograd.grad(out, list(leaves.values()), do)
    return {"out": out, "lse": lse, **{f"d{n}": g for n, g in zip(leaves, grads, strict=True)}}


def correctness(device: str, dtype: torch.dtype, length: int) -> dict:
    res = {}
    for hk in (16, 4):
        x = inputs(hk, length, device, dtype)
        g = torch.Generator(device=device).manual_seed(hk)
        do = torch.randn(x["q"].shape, device=device, dtype=dtype, generator=g)
        with variant("blocks-first"):
            ref = forward_backward(x, do)
        rs = slice(0, min(256, length))
        oracle = gqa_oracle(x["q"][:, :, rs], x["k"], x["v"], bias=x["bias"][:, :, rs])
        res[f"Hk={hk} out max abs err vs oracle"] = float(
            (ref["out"][:, :, rs].detach().double() - oracle).abs().max()
        )
        for name in VARIANTS:
            with variant(name):
                got = forward_backward(x, do)
            differ = [k for k in ref if not torch.equal(ref[k], got[k])]
            res[f"Hk={hk} {name} bitwise equal to blocks-first"] = differ or "all equal"
            log(f"Hk={hk} {name}: differ {differ}")
    return res


def ms(fn: Callable[[], object]) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


LENGTH = 8192
FLOPS = 4 * LENGTH * LENGTH * 16 * 128


def bench_variant(name: str, x: dict, configs: list[tuple[int, int, int]]) -> dict:
    """TFLOP/s of one variant: forward autotuned and pinned per config, backward with dbias."""
    q, k, v, bias = x["q"], x["k"], x["v"], x["bias"]
    problem = _flash.FlashProblem(False, 1, 16, k.shape[1], False, 128**-0.5, LENGTH, LENGTH)
    row = {}
    with variant(name):
        row[f"{name} fwd"] = FLOPS / ms(lambda: gqa_attention(q, k, v, bias=bias)) * 1e-9
        row[f"{name} fwd config"] = str(_flash._fwd.best_config)
        for c in configs:
            cfg = _flash.FlashConfig(128, *c)

            def call(cfg: _flash.FlashConfig = cfg) -> object:
                return _flash.flash_forward(q, k, v, problem, bias=bias, config=cfg)

            try:
                row[f"{name} fwd pinned {c}"] = FLOPS / ms(call) * 1e-9
            except Exception as exc:  # a config past the device's shared memory
                row[f"{name} fwd pinned {c}"] = type(exc).__name__
        leaves = [t.detach().requires_grad_() for t in (q, k, v, bias)]
        out = gqa_attention(*leaves[:3], bias=leaves[3])
        g = torch.Generator(device=q.device).manual_seed(1)
        do = torch.randn(out.shape, device=q.device, dtype=out.dtype, generator=g)
        t = ms(lambda: torch.autograd.grad(out, leaves, do, retain_graph=True))
        row[f"{name} bwd+dbias"] = 2.5 * FLOPS / t * 1e-9
    log(json.dumps(row))
    return row


def sdpa_with_bias(x: dict) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, bias = x["q"], x["k"], x["v"], x["bias"]
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    row = {}
    for label, backend in (
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        with sdpa_kernel([backend]):
            t = ms(lambda: sdpa(q, kk, vv, attn_mask=bias))
        row[f"sdpa {label} fwd+bias"] = FLOPS / t * 1e-9
    return row


def bench(configs: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for hk in (16, 4):
        x = inputs(hk, LENGTH, "cuda", torch.bfloat16)
        row = {"case": f"gqa bf16 B=1 Hq=16 Hk={hk} D=128 L={LENGTH} bias (1,1,L,L) bf16"}
        for name in VARIANTS:
            row |= bench_variant(name, x, configs)
        row |= sdpa_with_bias(x)
        log(json.dumps(row))
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sections", default="correctness,bench")
    ap.add_argument("--configs", default="64,8,3;64,8,4;32,8,4;64,8,2;128,8,2")
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args()
    results: dict = {}
    if args.dry:
        results["correctness"] = correctness("cpu", torch.float16, 128)
    else:
        results["device"] = torch.cuda.get_device_name()
        if "correctness" in args.sections:
            results["correctness"] = correctness("cuda", torch.bfloat16, 2048)
        if "bench" in args.sections:
            configs = [tuple(int(n) for n in c.split(",")) for c in args.configs.split(";")]
            results["bench"] = bench(configs)
    with open(os.path.join(args.out, "flash_bias_check.json"), "w") as f:
        json.dump(results, f, indent=1)
    bad = [k for k, v in results.get("correctness", {}).items() if isinstance(v, list) and v]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
