"""Device check of the flash core (varlen_attention, gqa_attention): correctness, opcheck, speed.

Run from the repository root on a CUDA machine:

    PYTHONPATH=. python3 ci/flash_device_check.py --out OUT_DIR [--sections correctness,op,bench]

Sections:
- correctness: the harness `check("gqa", ...)` (and `check("varlen", ...)` when its spec exists,
  else a seeded sweep judged by the same tolerance rules) in float16 / bfloat16 / float32 with
  gradients; every D in [8, 256]; a varlen call whose T * H * D passes 2^31 (64-bit offsets).
  Runs with ATTNVERIFY_AUTOTUNE=0 (first config only) to keep compile time down.
- op: torch.library.opcheck of both custom ops, and torch.compile(fullgraph=True) fwd + bwd.
- sm90 (no GPU needed; run without TRITON_INTERPRET): compile the forward for sm90 at D = 72,
  80, 128, varlen and dense, every FWD config, RAW_MAX on and off, and print registers, spills,
  shared memory and the instruction mix of the full-tile KV loop (`compile_fwd_sm90`).
- bench: triton.testing.do_bench medians of ours and the baselines in this process; TFLOP/s on
  useful FLOPs (4 * sum(Lq_i * Lk_i) * Hq * D forward, 2.5x that backward); each shape is
  checked against the float64 oracle on a slice first. Every forward of ours is timed three
  ways: the public call, its kernel alone (host work done once: `kernel_only`), and the kernel
  with RAW_MAX=False (the scale-first softmax of the tree before 2026-11-21); `host_share` is
  the part of the public call's time the GPU spent waiting for the host. --fwd-only skips the
  backward, bias and sparse benches. `--bench configs` adds a pinned sweep of the forward
  over FWD_CONFIGS and CONFIG_CANDIDATES (`config_sweep`).
Writes OUT_DIR/flash_device_check.json and prints a table.
"""

# ruff: noqa: B023  (every benchmark lambda runs inside the loop iteration that made it)

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Callable

import torch
import triton

from attnverify.kernels import _autotune as autotune_policy
from attnverify.kernels import _flash
from attnverify.kernels._flash_offline import (
    compile_inputs,
    compile_sm90,
    ptx_loops,
    ptxas_usage,
    record_launches,
)
from attnverify.kernels.gqa import gqa_attention
from attnverify.kernels.varlen import varlen_attention
from attnverify.reference.gqa import gqa_attention as gqa_oracle
from attnverify.reference.varlen import varlen_attention as varlen_oracle
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import lookup

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run under the interpreter
RESULTS: dict = {"device": "", "sections": {}}


def log(*args: object) -> None:
    print(*args, flush=True)


def cu(lens: list[int], device: str | None = None) -> torch.Tensor:
    return torch.tensor(
        [0, *itertools_accumulate(lens)], dtype=torch.int32, device=device or DEVICE
    )


def itertools_accumulate(lens: list[int]) -> list[int]:
    out, total = [], 0
    for n in lens:
        total += n
        out.append(total)
    return out


# ------------------------------------------------------------------ correctness


def judge_varlen(lens_q, lens_k, hq, hk, d, causal, dtype, seed) -> list[str]:
    """Run one varlen case fwd + bwd against the float64 oracle; return failure messages."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    tq, tk = sum(lens_q), sum(lens_k)
    q = torch.randn(tq, hq, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    k = torch.randn(tk, hk, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    v = torch.randn(tk, hk, d, device=DEVICE, generator=g).to(dtype).requires_grad_()
    cq, ck = cu(lens_q), cu(lens_k)
    out, lse = varlen_attention(q, k, v, cq, ck, causal=causal, return_lse=True)
    do = torch.randn(out.shape, device=DEVICE, generator=g).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    results = {"out": out, "lse": lse, "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    refs, bases = {}, {}
    for name, cdt in (("ref", torch.float64), ("base", dtype)):
        o, lz = varlen_oracle(q, k, v, cq, ck, causal=causal, return_lse=True, compute_dtype=cdt)
        gr = torch.autograd.grad(o, (q, k, v), do.to(cdt), allow_unused=True)
        gr = [
            x if x is not None else torch.zeros_like(y, dtype=cdt)
            for x, y in zip(gr, (q, k, v), strict=True)
        ]
        (refs if name == "ref" else bases).update(out=o, lse=lz, dq=gr[0], dk=gr[1], dv=gr[2])
    fails = []
    dtn = str(dtype).removeprefix("torch.")
    gmag = max(float(refs[n].abs().max()) if refs[n].numel() else 0.0 for n in ("dq", "dk", "dv"))
    empty_rows, unseen_keys = structural_zeros(lens_q, lens_k, causal)
    zero_masks = {"out": empty_rows, "dq": empty_rows, "dk": unseen_keys, "dv": unseen_keys}
    for name, val in results.items():
        rule = lookup("varlen", dtn, name, "gpu")
        qdt = torch.float32 if name == "lse" else dtype
        zeros = zero_masks.get(name)
        zeros = zeros[:, None, None] if zeros is not None else None
        mag = gmag if name in ("dq", "dk", "dv") else None
        c = compare(f"varlen/{dtn}/{name}", name, val, refs[name], bases[name], rule, qdt,
                    zeros=zeros, magnitude=mag)  # fmt: skip
        if not c.passed:
            fails.append(f"{lens_q} {lens_k} Hq={hq} Hk={hk} D={d} causal={causal}: {c}")
    return fails


def structural_zeros(
    lens_q: list[int], lens_k: list[int], causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Tq,) rows with no visible key and (Tk,) keys no query sees: their values must be 0."""
    rows, keys = [], []
    for lq, lk in zip(lens_q, lens_k, strict=True):
        i = torch.arange(lq)
        rows.append((i + lk - lq < 0) if causal else torch.full((lq,), lk == 0))
        keys.append(torch.full((lk,), lq == 0))
    return torch.cat(rows).to(DEVICE), torch.cat(keys).to(DEVICE)


def varlen_sweep(count: int, seed: int) -> dict:
    rng = random.Random(seed)
    fails, n = [], 0
    for dtype in DTYPES:
        for i in range(count):
            nseq = rng.randint(1, 5)
            lens_q = [
                rng.choice([0, 1, rng.randint(1, 300), rng.randint(100, 700)]) for _ in range(nseq)
            ]
            same = rng.random() < 0.5
            lens_k = (
                list(lens_q)
                if same
                else [rng.choice([0, rng.randint(1, 400)]) for _ in range(nseq)]
            )
            hk = rng.choice([1, 2, 4])
            hq = hk * rng.choice([1, 2, 3])
            d = rng.choice([8, 16, 24, 32, 40, 64, 72, 80, 96, 112, 128, 136, 160, 192, 256])
            causal = rng.random() < 0.5
            new = judge_varlen(lens_q, lens_k, hq, hk, d, causal, dtype, seed * 1000 + i)
            for msg in new:
                log("FAIL", msg)
            fails += new
            n += 1
    return {"cases": n, "failures": fails}


HEAD_DIMS = (8, 40, 72, 104, 136, 200)


def head_dim_sweep(head_dims: tuple[int, ...]) -> dict:
    fails, n = [], 0
    for d in head_dims:
        for dtype in (torch.bfloat16, torch.float32):
            new = judge_varlen([130, 0, 67], [130, 5, 200], 4, 2, d, d % 16 == 0, dtype, d)
            for msg in new:
                log("FAIL", msg)
            fails += new
            n += 1
    return {"cases": n, "failures": fails}


def large_offsets() -> dict:
    """T * Hq * D > 2^31: 1040 sequences of 1024 tokens, H=16, D=128; last sequence checked."""
    n_seq, length, h, d = 1040, 1024, 16, 128
    t = n_seq * length
    g = torch.Generator(device=DEVICE).manual_seed(7)
    q = torch.randn(t, h, d, device=DEVICE, dtype=torch.bfloat16, generator=g)
    k = torch.randn(t, h, d, device=DEVICE, dtype=torch.bfloat16, generator=g)
    v = torch.randn(t, h, d, device=DEVICE, dtype=torch.bfloat16, generator=g)
    c = cu([length] * n_seq)
    out = varlen_attention(q, k, v, c, c)
    tail = slice(t - length, t)
    ref = gqa_oracle(*(x[tail].transpose(0, 1).unsqueeze(0) for x in (q, k, v)))[0].transpose(0, 1)
    err = float((out[tail].double() - ref).abs().max())
    del q, k, v, out
    torch.cuda.empty_cache()
    return {"elements": t * h * d, "max_abs_err_last_seq": err, "passed": err < 2e-2}


def harness_cases(variant: str, impl: Callable, count: int, seconds: float) -> dict:
    """Cases drawn from the harness strategy (device profile, all dtypes), run one by one
    without shrinking; each failure is logged at once with its replayable case JSON."""
    from attnverify.verify.runner import run_case
    from attnverify.verify.specs import get_spec

    spec = get_spec(variant)
    strategy = spec.strategy("device", dtypes=[str(d).removeprefix("torch.") for d in DTYPES])
    fails, n, start = [], 0, time.time()
    while n < count and time.time() - start < seconds:
        case = strategy.example()
        result = run_case(spec, case, impl, device=DEVICE, grads=True)
        n += 1
        if not result.passed:
            msg = f"{case.to_json()} :: {result.error or ''} " + " | ".join(
                str(c) for c in result.comparisons if not c.passed
            )
            fails.append(msg[:3000])
            log("FAIL", variant, msg[:3000])
    log(f"{variant} harness cases: {n}, failures: {len(fails)}, {time.time() - start:.0f}s")
    return {"cases": n, "failures": fails}


def correctness(examples: int, seconds: float, head_dims: tuple[int, ...]) -> dict:
    os.environ[autotune_policy.ENV] = "0"
    res = {}
    for name, fn in (("varlen", varlen_attention), ("gqa", gqa_attention)):
        try:
            res[f"{name}_harness"] = harness_cases(name, fn, examples, seconds)
        except (KeyError, ImportError) as exc:
            log(f"{name} spec unavailable: {exc}")
    t = time.time()
    res["varlen_sweep"] = varlen_sweep(max(1, examples // 6), seed=1)
    log("varlen sweep", len(res["varlen_sweep"]["failures"]), "failures", f"{time.time() - t:.0f}s")
    t = time.time()
    res["head_dims"] = head_dim_sweep(head_dims)
    log("head dims", len(res["head_dims"]["failures"]), "failures", f"{time.time() - t:.0f}s")
    res["large_offsets"] = large_offsets()
    log("large offsets", res["large_offsets"])
    os.environ.pop(autotune_policy.ENV)
    return res


# ------------------------------------------------------------------ op / compile


def op_checks() -> dict:
    res = {}
    g = torch.Generator(device=DEVICE).manual_seed(3)
    lens = [37, 0, 100]
    q = torch.randn(137, 4, 72, device=DEVICE, generator=g, dtype=torch.float16)
    k = torch.randn(137, 2, 72, device=DEVICE, generator=g, dtype=torch.float16)
    v = torch.randn(137, 2, 72, device=DEVICE, generator=g, dtype=torch.float16)
    c = cu(lens)
    for x in (q, k, v):
        x.requires_grad_()
    scale = 1 / math.sqrt(72)
    res["opcheck_varlen"] = str(
        torch.library.opcheck(torch.ops.attnverify.varlen_fwd, (q, k, v, c, c, True, scale))
    )
    qb = torch.randn(2, 4, 50, 64, device=DEVICE, generator=g, dtype=torch.float16)
    kb = torch.randn(2, 2, 70, 64, device=DEVICE, generator=g, dtype=torch.float16)
    vb = torch.randn(2, 2, 70, 64, device=DEVICE, generator=g, dtype=torch.float16)
    mask = torch.rand(1, 2, 50, 70, device=DEVICE, generator=g) < 0.7
    bias = torch.randn(2, 1, 1, 70, device=DEVICE, generator=g, dtype=torch.float32)
    for x in (qb, kb, vb, bias):
        x.requires_grad_()
    res["opcheck_gqa"] = str(
        torch.library.opcheck(torch.ops.attnverify.gqa_fwd, (qb, kb, vb, mask, bias, False, 0.125))
    )
    log("opcheck", res["opcheck_varlen"], res["opcheck_gqa"])

    def fv(q, k, v):
        return varlen_attention(q, k, v, c, c, causal=True)

    def fg(q, k, v, bias):
        return gqa_attention(q, k, v, mask=mask, bias=bias, causal=True)

    torch._dynamo.reset()
    for name, fn, args in (("varlen", fv, (q, k, v)), ("gqa", fg, (qb, kb, vb, bias))):
        compiled = torch.compile(fn, fullgraph=True)
        out_c = compiled(*args)
        out_e = fn(*args)
        gc = torch.autograd.grad(out_c.float().square().sum(), args)
        ge = torch.autograd.grad(out_e.float().square().sum(), args)
        same = bool(torch.equal(out_c, out_e)) and all(
            torch.equal(a, b) for a, b in zip(gc, ge, strict=True)
        )
        res[f"compile_{name}_fullgraph_equal_eager"] = same
        log("compile", name, same)
    return res


# ------------------------------------------------------------------ bench


def bench_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def tflops(flops: float, ms: float) -> float:
    return flops / ms * 1e-9


def try_bench(name: str, fn: Callable[[], object]) -> float | None:
    try:
        fn()
        torch.cuda.synchronize()
        return bench_ms(fn)
    except Exception as exc:  # a baseline missing on this torch/device is reported, not fatal
        log(f"  baseline {name} unavailable: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def kernel_only(
    call: Callable[[], object], config: tuple[int, int, int] | None = None, **override: object
) -> Callable[[], object]:
    """A closure launching just the forward kernel that `call()` launches, its host work (input
    checks, cu_seqlens read, work table, argument packing) done once here; `override` replaces
    kernel arguments (e.g. RAW_MAX=False for the scale-first softmax of the previous tree);
    `config` = (BLOCK_INNER, num_warps, num_stages) pins the launch instead of autotuning."""
    launch = record_launches(call)[-1]
    kernel, grid, kwargs = launch.kernel, launch.grid, {**launch.kwargs, **override}
    if launch.config is not None:
        kwargs = {**launch.pinned_kwargs(), **override}
        return lambda: kernel.fn[grid](**kwargs)
    if config is None:
        return lambda: kernel[grid](**kwargs)
    b, w, st = config
    return lambda: kernel.fn[grid](**kwargs, BLOCK_INNER=b, num_warps=w, num_stages=st)


def split_timings(row: dict, prefix: str, flops: float, call: Callable[[], object]) -> None:
    """Public call vs its kernel alone (host share), and the kernel with RAW_MAX off."""
    ms = bench_ms(call)
    ms_kernel = bench_ms(kernel_only(call))
    ms_scale_first = bench_ms(kernel_only(call, RAW_MAX=False))
    row[f"{prefix}_fwd_tflops"] = tflops(flops, ms)
    row[f"{prefix}_kernel_only_fwd_tflops"] = tflops(flops, ms_kernel)
    row[f"{prefix}_kernel_raw_max_off_fwd_tflops"] = tflops(flops, ms_scale_first)
    row[f"{prefix}_host_share_of_time"] = 1 - ms_kernel / ms


def varlen_bench(rows: list, fwd_only: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    lens = [1024, 8192, 2048, 4096, 1024, 3072]
    h = 16
    t = sum(lens)
    c = cu(lens)
    flops = 4 * sum(n * n for n in lens) * h
    doc = torch.repeat_interleave(
        torch.arange(len(lens), device=DEVICE), torch.tensor(lens, device=DEVICE)
    )
    bm = create_block_mask(lambda b, hh, qi, ki: doc[qi] == doc[ki], 1, 1, t, t, device=DEVICE)
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    for d in (72, 80, 128):
        g = torch.Generator(device=DEVICE).manual_seed(d)
        q, k, v = (
            torch.randn(t, h, d, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(3)
        )
        out = varlen_attention(q, k, v, c, c)
        sl = slice(lens[0], lens[0] + lens[1])
        ref = varlen_oracle(q[sl], k[sl], v[sl], cu([lens[1]]), cu([lens[1]]))
        err = float((out[sl].double() - ref).abs().max())
        row = {"case": f"varlen bf16 H=16 D={d} T={t} lens={lens}", "check_max_abs_err": err}
        f = flops * d
        qn, kn, vn = (x.detach() for x in (q, k, v))
        split_timings(row, "ours", f, lambda: varlen_attention(qn, kn, vn, c, c))
        row["ours_fwd_config"] = str(_flash._fwd.best_config)

        def cold() -> object:
            _flash._cached_work_table.cache_clear()
            return varlen_attention(qn, kn, vn, c, c)

        row["ours_fwd_uncached_table_tflops"] = tflops(f, bench_ms(cold))
        if not fwd_only:
            do = torch.randn_like(out)
            out = varlen_attention(q, k, v, c, c)
            ms_b = bench_ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            row["ours_bwd_tflops"] = tflops(2.5 * f, ms_b)
        qf, kf, vf = (x.detach().transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        ms_f = try_bench("flex", lambda: flex(qf, kf, vf, block_mask=bm))
        if ms_f:
            row["flex_doc_fwd_tflops"] = tflops(f, ms_f)
        if varlen_attn is not None:
            ms_v = try_bench(
                "varlen_attn",
                lambda: varlen_attn(q.detach(), k.detach(), v.detach(), c, c, max(lens), max(lens)),
            )
            if ms_v:
                row["torch_varlen_attn_fwd_tflops"] = tflops(f, ms_v)
        # dense equal-length batch with the same total tokens: overhead of varlen bookkeeping
        eq = [t // 4] * 4
        ce = cu(eq)
        f_eq = 4 * sum(n * n for n in eq) * h * d
        qd, kd, vd = (x.view(4, t // 4, h, d).transpose(1, 2) for x in (qn, kn, vn))
        split_timings(row, "ours_varlen_equal", f_eq, lambda: varlen_attention(qn, kn, vn, ce, ce))
        split_timings(row, "ours_dense_same_tokens", f_eq, lambda: gqa_attention(qd, kd, vd))
        row["varlen_over_dense_time"] = (
            row["ours_dense_same_tokens_fwd_tflops"] / row["ours_varlen_equal_fwd_tflops"]
        )
        row["varlen_over_dense_kernel_time"] = (
            row["ours_dense_same_tokens_kernel_only_fwd_tflops"]
            / row["ours_varlen_equal_kernel_only_fwd_tflops"]
        )
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            qs, ks, vs = (
                x.detach().view(4, t // 4, h, d).transpose(1, 2).contiguous().requires_grad_()
                for x in (q, k, v)
            )
            ms_s = try_bench(
                "sdpa flash", lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)
            )
            if ms_s:
                row["sdpa_flash_dense_fwd_tflops"] = tflops(f_eq, ms_s)
            if ms_s and not fwd_only:
                os_ = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)
                dos = torch.randn_like(os_)
                ms_sb = try_bench(
                    "sdpa flash bwd",
                    lambda: torch.autograd.grad(os_, (qs, ks, vs), dos, retain_graph=True),
                )
                if ms_sb:
                    row["sdpa_flash_dense_bwd_tflops"] = tflops(2.5 * f_eq, ms_sb)
        rows.append(row)
        log(json.dumps(row))


# candidates beside FWD_CONFIGS: 8-warp configs do not spill at BLOCK_OUTER 128 (sm90 section)
CONFIG_CANDIDATES = ((128, 8, 4), (128, 8, 2))


def config_sweep(rows: list) -> None:
    """Forward kernel alone under every FWD config and candidate, pinned (varlen bench lens,
    bf16, H=16, D = 72, 80, 128): which configs the autotuner should keep."""
    lens = [1024, 8192, 2048, 4096, 1024, 3072]
    h, t, c = 16, sum(lens), cu(lens)
    flops = 4 * sum(n * n for n in lens) * h
    for d in (72, 80, 128):
        g = torch.Generator(device=DEVICE).manual_seed(d)
        q, k, v = (
            torch.randn(t, h, d, device=DEVICE, dtype=torch.bfloat16, generator=g) for _ in range(3)
        )
        row = {"case": f"config sweep varlen bf16 H=16 D={d} lens={lens}"}
        for config in (*_flash.FWD_CONFIGS, *CONFIG_CANDIDATES):
            name = "b{}-w{}-s{}".format(*config)
            try:
                fn = kernel_only(lambda: varlen_attention(q, k, v, c, c), config)
                fn()
                torch.cuda.synchronize()
                row[f"{name}_tflops"] = tflops(flops * d, bench_ms(fn))
            except Exception as exc:  # e.g. out of shared memory: reported, not fatal
                row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        rows.append(row)
        log(json.dumps(row))


def gqa_bench(rows: list, fwd_only: bool) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for hk in (16, 4):
        rows.append(gqa_bench_one(hk, flex, sdpa, fwd_only))
        torch.cuda.empty_cache()


def gqa_bench_one(hk: int, flex: Callable, sdpa: Callable, fwd_only: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    L, hq, d = 8192, 16, 128
    f = 4 * L * L * hq * d
    g = torch.Generator(device=DEVICE).manual_seed(hk)
    q = torch.randn(1, hq, L, d, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(1, hk, L, d, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(1, hk, L, d, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_()
    bias = (
        torch.randn(1, 1, L, L, device=DEVICE, dtype=torch.bfloat16, generator=g) * 0.5
    ).requires_grad_()
    checked = None if fwd_only else bias  # --fwd-only: no bias compile
    out = gqa_attention(q, k, v, bias=checked)
    rs = slice(0, 256)
    ref = gqa_oracle(q[:, :, rs], k, v, bias=None if fwd_only else bias[:, :, rs])
    row = {"case": f"gqa bf16 B=1 Hq=16 Hk={hk} D=128 L={L}",
           "check_max_abs_err": float((out[:, :, rs].double() - ref).abs().max())}  # fmt: skip
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    split_timings(row, "ours", f, lambda: gqa_attention(qd, kd, vd))
    row["ours_fwd_config"] = str(_flash._fwd.best_config)
    if not fwd_only:
        ms = f * 1e-9 / row["ours_fwd_tflops"]
        ms_bias = bench_ms(lambda: gqa_attention(q, k, v, bias=bias))
        row["ours_fwd_bias_tflops"] = tflops(f, ms_bias)
        do = torch.randn_like(out)
        ms_bb = bench_ms(lambda: torch.autograd.grad(out, (q, k, v, bias), do, retain_graph=True))
        row["ours_bwd_bias_tflops"] = tflops(2.5 * f, ms_bb)
        out_nb = gqa_attention(q, k, v)
        ms_b = bench_ms(lambda: torch.autograd.grad(out_nb, (q, k, v), do, retain_graph=True))
        row["ours_bwd_tflops"] = tflops(2.5 * f, ms_b)
        # 90% of 128x128 tiles all False
        gm = torch.Generator(device=DEVICE).manual_seed(1)
        tiles = torch.rand(L // 128, L // 128, device=DEVICE, generator=gm) < 0.1
        tiles[torch.arange(L // 128), torch.arange(L // 128)] = True
        mask = tiles.repeat_interleave(128, 0).repeat_interleave(128, 1)[None, None]
        ms_sparse = bench_ms(lambda: gqa_attention(q, k, v, mask=mask))
        row["ours_sparse90_over_dense_time"] = ms_sparse / ms
        row["ours_sparse90_fwd_config"] = str(_flash._fwd.best_config)
        sparse_kernel = kernel_only(lambda: gqa_attention(q, k, v, mask=mask))
        row["ours_sparse90_kernel_only_over_dense_time"] = bench_ms(sparse_kernel) / ms
        problem = _flash.FlashProblem(False, 1, hq, hk, False, 0.1, seqlen_q=L, seqlen_k=L)
        row["sparse90_tile_codes_ms"] = bench_ms(lambda: _flash._tile_codes(mask, problem, 128))
        codes = _flash._tile_codes(mask, problem, 128)
        row["sparse90_tile_lists_ms"] = bench_ms(lambda: _flash._tile_lists(codes, problem, 128))
    ms_f = try_bench("flex", lambda: flex(qd, kd, vd, enable_gqa=hk != hq))
    if ms_f:
        row["flex_fwd_tflops"] = tflops(f, ms_f)
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        kk, vv = (
            (kd, vd)
            if hk == hq
            else (kd.repeat_interleave(hq // hk, 1), vd.repeat_interleave(hq // hk, 1))
        )
        with sdpa_kernel([backend]):
            ms_s = try_bench(f"sdpa {name}", lambda: sdpa(qd, kk, vv))
            if ms_s:
                row[f"sdpa_{name}_fwd_tflops"] = tflops(f, ms_s)
            if name != "flash" and not fwd_only:
                bd = bias.detach()
                ms_sb = try_bench(f"sdpa {name} bias", lambda: sdpa(qd, kk, vv, attn_mask=bd))
                if ms_sb:
                    row[f"sdpa_{name}_fwd_bias_tflops"] = tflops(f, ms_sb)
            if name == "flash" and not fwd_only:
                qs, ks, vs = (x.clone().requires_grad_() for x in (qd, kk, vv))
                try:
                    os_ = sdpa(qs, ks, vs)
                    ms_sbw = try_bench(
                        "sdpa flash bwd",
                        lambda: torch.autograd.grad(os_, (qs, ks, vs), do, retain_graph=True),
                    )
                    if ms_sbw:
                        row["sdpa_flash_bwd_tflops"] = tflops(2.5 * f, ms_sbw)
                except RuntimeError as exc:
                    log("  sdpa flash bwd unavailable", exc)
    log(json.dumps(row))
    return row


# ------------------------------------------------------------------ sm90 compile facts


def compile_fwd_sm90(d: int, varlen: bool, config: _flash.FlashConfig, raw_max: bool) -> dict:
    """Compile the forward exactly as `flash_forward` launches it (bf16, non-causal, no mask or
    bias) for sm90 with Triton's own binder, without a GPU; return registers, spills, shared
    memory and the instruction mix of the full-tile KV loop (the first loop of the PTX)."""
    from collections import Counter

    q, problem, _ = compile_inputs(d, varlen)
    launch = record_launches(lambda: _flash.flash_forward(q, q, q, problem, config=config))[-1]
    compiled = compile_sm90(launch, RAW_MAX=raw_max)
    registers, spills = ptxas_usage(compiled.asm["ptx"])
    loop = ptx_loops(compiled.asm["ptx"])[0]
    mix = Counter(loop)
    return {
        "D": d, "varlen": varlen, "config": str(config), "raw_max": raw_max,
        "registers": registers, "spill_bytes": spills, "shared_bytes": compiled.metadata.shared,
        "loop_instructions": len(loop),
        "loop_mix": {k: mix[k] for k in sorted(mix) if k.split(".")[0] in SM90_OPS},
    }  # fmt: skip


SM90_OPS = ("wgmma", "cp", "mul", "fma", "ex2", "add", "max", "cvt", "ld", "st")


def sm90_facts() -> list[dict]:
    """Compile facts of the forward at D = 72, 80, 128, varlen and dense, every FWD config."""
    facts = []
    for d in (128, 80, 72):
        for b, w, st in _flash.FWD_CONFIGS:
            for varlen in (True, False):
                for raw_max in (True, False):
                    config = _flash.FlashConfig(128, b, w, st)
                    facts.append(compile_fwd_sm90(d, varlen, config, raw_max))
                    log(json.dumps(facts[-1]))
    return facts


def guarded(fn: Callable, *args: object) -> object:
    """Run one section; a crash is logged with its traceback and the next section still runs."""
    try:
        return fn(*args)
    except Exception:
        log(traceback.format_exc())
        return {"error": traceback.format_exc()[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="correctness,op,bench")
    ap.add_argument("--examples", type=int, default=40, help="cases per dtype per variant")
    ap.add_argument("--seconds", type=float, default=120, help="time cap per harness variant")
    ap.add_argument("--bench", default="varlen,gqa")
    ap.add_argument(
        "--head-dims",
        default=",".join(map(str, HEAD_DIMS)),
        help="head dims of the correctness head-dim sweep (bf16 + fp32, fwd + bwd each)",
    )
    ap.add_argument(
        "--fwd-only", action="store_true", help="bench forwards only (no backward, bias, sparse)"
    )
    args = ap.parse_args()
    RESULTS["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    RESULTS["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
    log(RESULTS["device"], RESULTS["versions"])
    sections = args.sections.split(",")
    ok = True
    path = os.path.join(args.out, "flash_device_check.json")
    if "correctness" in sections:
        dims = tuple(int(d) for d in args.head_dims.split(","))
        res = correctness(args.examples, args.seconds, dims)
        RESULTS["sections"]["correctness"] = res
        ok &= all(not r["failures"] for k, r in res.items() if k != "large_offsets")
        ok &= res["large_offsets"]["passed"]
        with open(path, "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)
    if "sm90" in sections:
        RESULTS["sections"]["sm90"] = guarded(sm90_facts)
    if "op" in sections:
        RESULTS["sections"]["op"] = guarded(op_checks)
    if "bench" in sections:
        for kernel in (_flash._fwd, _flash._dkdv, _flash._dq):
            kernel.cache.clear()  # correctness pinned the first config per key: autotune anew
        rows: list = []
        RESULTS["sections"]["bench"] = rows
        if "varlen" in args.bench:
            guarded(varlen_bench, rows, args.fwd_only)
        if "gqa" in args.bench:
            guarded(gqa_bench, rows, args.fwd_only)
        if "configs" in args.bench:
            guarded(config_sweep, rows)
    with open(path, "w") as fh:
        json.dump(RESULTS, fh, indent=1, default=str)
    log("overall correctness ok:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
