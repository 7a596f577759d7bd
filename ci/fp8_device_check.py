"""Device check of the fp8 attention kernel: randomized correctness, then timings, one process.

Correctness: random shapes (causal, GQA, Lq != Lk, per-head descales, e4m3 / e5m2 / mixed,
bf16 / fp16 out, D from 16 to 256 incl. 80 / 96 / 144, row-major / prepared / strided V and
q/k views) against the float64 oracle, with the tolerance rule of `attnverify.verify.tolerance`
relative to the fp8 baseline (fp32 on dequantized inputs, P rounded through V's fp8 dtype).
Every case also runs with a second V layout and must give bitwise the same out and lse.

Timings (triton.testing.do_bench, median, same process): e4m3, B=1, H=16, D=128, L=8192 --
a sweep of pinned configs (`SWEEP`: tiles, warps, stages, register cap; non-causal and causal),
then the public path: prepared V, row-major V (the enforced transpose timed in), the same
kernel without the enforcement, causal, the V transpose alone (Triton vs torch copy), compiled
FlexAttention fp8 and bf16 baselines (ours, SDPA flash). Each timed config of ours is first
checked against the oracle at the bench shape (out and lse of the last 512 query rows); the
verdicts are in the JSON next to the speeds. `--jobs N` first compiles every timed kernel in N
processes (Triton's and Inductor's caches are on disk), then times in this one.

    PYTHONPATH=. python ci/fp8_device_check.py --out DIR [--seconds 200] [--per-key 10]
        [--jobs 8] [--precompile-only] [--bench-len 8192] [--skip-bench]

Writes DIR/fp8_device_check.json and prints a summary; exit status 1 if a case failed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import triton
from triton.testing import do_bench

from attnverify.arch import current_arch
from attnverify.kernels import fp8 as kfp8
from attnverify.reference._common import attend, causal_visible
from attnverify.reference.fp8 import dequantize, quantize_fp8
from attnverify.reference.fp8 import fp8_attention as oracle
from attnverify.validation import check_fp8_inputs
from attnverify.verify.compare import Comparison, compare
from attnverify.verify.gqa import term_magnitudes
from attnverify.verify.tolerance import arch_kind, lookup

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
SPECIAL_LENGTHS = (1, 15, 63, 64, 65, 111, 127, 128, 129, 255, 257, 1000)
V_LAYOUTS = ("row", "prepared", "strided")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _pinned_config(index: int, d: int) -> triton.Config | None:
    """The index-th config of every candidate list a launch with head dim d may use."""
    d0, d1 = kfp8.split_head_dim(d)
    wide = d0 + d1 > 128
    configs = kfp8.WIDE_CONFIGS if wide else [c for c in kfp8.GPU_CONFIGS
                                              if c not in kfp8.WIDE_CONFIGS]  # fmt: skip
    return configs[index % len(configs)]


def _keys() -> list[dict[str, Any]]:
    """Compile keys (one kernel specialisation each): head dim, causal, dtypes, out dtype."""
    keys = []
    for d in (16, 48, 64, 80, 96, 128, 144, 192, 256):
        for causal in (False, True):
            keys.append({"D": d, "causal": causal, "qk": E4M3, "v": E4M3, "out": torch.bfloat16})
    for d in (64, 80, 128):
        for causal in (False, True):
            keys.append({"D": d, "causal": causal, "qk": E5M2, "v": E5M2, "out": torch.bfloat16})
    for causal in (False, True):
        keys.append({"D": 128, "causal": causal, "qk": E4M3, "v": E4M3, "out": torch.float16})
        keys.append({"D": 128, "causal": causal, "qk": E4M3, "v": E5M2, "out": torch.bfloat16})
    gpu = torch.cuda.is_available()
    for i, key in enumerate(keys):
        autotuned = not gpu or (key["D"] == 128 and key["qk"] == key["v"] == E4M3
                                and key["out"] == torch.bfloat16)  # fmt: skip
        key["config"] = None if autotuned else _pinned_config(i, key["D"])
    return keys


def _length(rng: random.Random) -> int:
    return rng.choice(SPECIAL_LENGTHS) if rng.random() < 0.5 else rng.randint(1, 1200)


def _view(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x (B, H, L, D) as a view with the given memory layout (same values)."""
    if layout == "bshd":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "strided":
        b, h, length, d = x.shape
        big = torch.zeros((b, length, h, d + 32), dtype=x.dtype, device=x.device)
        big[..., 16 : 16 + d] = x.transpose(1, 2)
        return big[..., 16 : 16 + d].transpose(1, 2)
    if layout == "prepared":
        return kfp8.prepare_fp8_v(x)
    return x.contiguous()


def make_case(rng: random.Random, key: dict[str, Any], seed: int) -> dict[str, Any]:
    """Draw a shape for `key`; values from a torch generator seeded with `seed`."""
    hk = rng.choice((1, 2, 3))
    g = rng.choice((1, 1, 2, 4, 5))
    b = rng.choice((1, 1, 2, 3))
    lq, lk = _length(rng), _length(rng)
    if rng.random() < 0.1:
        lk = 0
    return {
        "B": b,
        "Hq": hk * g,
        "Hk": hk,
        "Lq": lq,
        "Lk": lk,
        "granularity": rng.choice(("tensor", "head")),
        "peaked": rng.random() < 0.2,
        "qk_layout": rng.choice(("contig", "bshd")),
        "v_layouts": rng.sample(V_LAYOUTS, 2),
        "seed": seed,
        **key,
    }


def build_inputs(case: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(case["seed"])
    b, hq, hk, lq, lk, d = (case[n] for n in ("B", "Hq", "Hk", "Lq", "Lk", "D"))

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device)

    q, k, v = normal(b, hq, lq, d), normal(b, hk, lk, d), normal(b, hk, lk, d)
    if case["peaked"]:
        q = q * 4.0
    gran = case["granularity"]
    q8, qd = quantize_fp8(q, case["qk"], gran, kv_heads=hk)
    if lk == 0:  # quantize_fp8 cannot reduce an empty tensor: unit descales
        k8, v8 = k.to(case["qk"]), v.to(case["v"])
        kd = torch.ones((b, hk) if gran == "head" else (), device=device)
        vd = kd.clone()
    else:
        k8, kd = quantize_fp8(k, case["qk"], gran)
        v8, vd = quantize_fp8(v, case["v"], gran)
    return {
        "q": _view(q8, case["qk_layout"]),
        "k": _view(k8, case["qk_layout"]),
        "v": v8,
        "q_descale": qd,
        "k_descale": kd,
        "v_descale": vd,
    }


def call_kernel(
    x: dict[str, torch.Tensor], v: torch.Tensor, case: dict[str, Any], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The public fp8_attention for autotuned keys; else its steps with the key's pinned config.

    Pinned configs (one compile per key instead of one per config) cycle through the pruned
    autotune list, so every GPU config runs on some keys.
    """
    kwargs = {"causal": case["causal"], "out_dtype": case["out"], "return_lse": True}
    args = (x["q"], x["k"], v, x["q_descale"], x["k_descale"], x["v_descale"])
    if case["config"] is None:
        return kfp8.fp8_attention(*args, **kwargs)
    arch = current_arch(v.device)
    check_fp8_inputs(*args, scale, case["out"], kfp8.HEAD_DIM_MULTIPLE)
    kfp8._check_arch(arch, (("q", args[0]), ("k", args[1]), ("v", v)))
    v = kfp8._v_for_arch(v, arch)
    return kfp8._launch_fwd(
        *args[:2], v, *args[3:], scale, case["causal"], case["out"], True, arch=arch,
        config=case["config"],
    )  # fmt: skip


def run_case(case: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Kernel vs oracle vs baseline for one case; second V layout must match bitwise."""
    x = build_inputs(case, device)
    scale = 1.0 / math.sqrt(case["D"])
    results = []
    for layout in case["v_layouts"]:
        results.append(call_kernel(x, _view(x["v"], layout), case, scale))
    ref_out, ref_lse = oracle(
        x["q"], x["k"], x["v"], x["q_descale"], x["k_descale"], x["v_descale"],
        causal=case["causal"], return_lse=True,
    )  # fmt: skip
    deq = [
        dequantize(t, d, torch.float32)
        for t, d in ((x["q"], x["q_descale"]), (x["k"], x["k_descale"]), (x["v"], x["v_descale"]))
    ]
    base_out, base_lse = attend(
        *deq, scale=scale, causal=case["causal"], compute_dtype=torch.float32, p_dtype=case["v"]
    )
    dtype_name = _name(case["qk"])
    out, lse = results[0]
    empty_rows = (ref_lse == float("-inf"))[..., None]
    comps = judge(
        f"fp8/{dtype_name}", dtype_name, (out, lse), (ref_out, ref_lse), (base_out, base_lse),
        magnitudes(x, ref_out, ref_lse, case["causal"], scale), case["out"], device, empty_rows,
    )  # fmt: skip
    out2, lse2 = results[1]
    bitwise = torch.equal(out, out2) and torch.equal(lse, lse2)
    return {
        "passed": all(c.passed for c in comps) and bitwise,
        "bitwise_v_layouts": bitwise,
        "ratios": {c.quantity: c.ratio for c in comps},
        "failures": [str(c) for c in comps if not c.passed],
    }


def magnitudes(
    x: dict[str, torch.Tensor],
    ref_out: torch.Tensor,
    ref_lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> dict[str, float]:
    """The harness's floor/cap magnitudes (`Fp8Spec.magnitudes`): largest summands of out and
    lse from the dequantized inputs in float64."""
    q, k, v = (dequantize(x[n], x[f"{n}_descale"], torch.float64) for n in ("q", "k", "v"))
    lq, lk = q.shape[2], k.shape[2]
    seen = torch.ones((lq, lk), dtype=torch.bool, device=q.device)
    if causal:
        seen = causal_visible(lq, lk, q.device)
    return term_magnitudes(q, k, v, None, ref_out, ref_lse, seen, None, scale)


def judge(
    path: str,
    dtype_name: str,
    got: tuple[torch.Tensor, torch.Tensor],
    ref: tuple[torch.Tensor, torch.Tensor],
    base: tuple[torch.Tensor, torch.Tensor],
    mags: dict[str, float],
    out_dtype: torch.dtype,
    device: torch.device,
    empty_rows: torch.Tensor | None = None,
) -> list[Comparison]:
    """out and lse against the oracle with the harness's rule for this arch (as its runner)."""
    kind = arch_kind(device)
    return [
        compare(f"{path}/{quantity}", quantity, g, r, b, lookup("fp8", dtype_name, quantity, kind),
                dt, zeros=z, magnitude=mags[quantity], logit_scale=mags["lse"])
        for quantity, g, r, b, dt, z in (
            ("out", got[0], ref[0], base[0], out_dtype, empty_rows),
            ("lse", got[1], ref[1], base[1], torch.float32, None),
        )
    ]  # fmt: skip


def describe(case: dict[str, Any]) -> str:
    return (
        f"B={case['B']} Hq={case['Hq']} Hk={case['Hk']} Lq={case['Lq']} Lk={case['Lk']} "
        f"D={case['D']} causal={case['causal']} qk={_name(case['qk'])} v={_name(case['v'])} "
        f"out={_name(case['out'])} {case['granularity']} peaked={case['peaked']} "
        f"qk_layout={case['qk_layout']} v_layouts={case['v_layouts']} seed={case['seed']} "
        f"config={case['config']}"
    )


def correctness(device: torch.device, per_key: int, deadline: float, log: Callable) -> dict:
    rng = random.Random(0)
    cases = [make_case(rng, key, 1000 + i * 97 + j) for i, key in enumerate(_keys()) for j in
             range(per_key)]  # fmt: skip
    rng.shuffle(cases)
    summary: dict[str, Any] = {"run": 0, "failed": 0, "not_bitwise": 0, "errors": 0,
                               "worst_ratio": {}, "failures": []}  # fmt: skip
    for case in cases:
        if time.monotonic() > deadline:
            summary["stopped_at_deadline"] = True
            break
        summary["run"] += 1
        try:
            res = run_case(case, device)
        except Exception:
            summary["errors"] += 1
            summary["failures"].append({"case": describe(case), "error": traceback.format_exc()})
            log(f"ERROR {describe(case)}\n{traceback.format_exc()}")
            continue
        key = f"D={case['D']} causal={case['causal']} {_name(case['qk'])}/{_name(case['v'])}"
        for q, r in res["ratios"].items():
            worst = summary["worst_ratio"].setdefault(q, [0.0, ""])
            if r > worst[0]:
                worst[:] = [r, key]
        if not res["bitwise_v_layouts"]:
            summary["not_bitwise"] += 1
        if not res["passed"]:
            summary["failed"] += 1
            summary["failures"].append({"case": describe(case), "why": res["failures"]})
            log(f"FAIL {describe(case)} bitwise={res['bitwise_v_layouts']}")
            for f in res["failures"]:
                log("  " + f)
    summary["total_planned"] = len(cases)
    return summary


def _bench(fn: Callable[[], Any], rep: int = 300) -> float:
    """Median ms (do_bench); without a GPU (a dry run of this script) one timed call."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return do_bench(fn, warmup=30, rep=rep, return_mode="median")


class BenchInputs:
    """The timed shape: e4m3 q, k, v (B=1, H=16, L, D=128), per-tensor descales, V prepared."""

    def __init__(self, device: torch.device, length: int) -> None:
        b, h, d = 1, 16, 128
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn((b, h, length, d), generator=gen, device=device) for _ in range(3))
        self.length = length
        self.q8, self.qd = quantize_fp8(q, E4M3)
        self.k8, self.kd = quantize_fp8(k, E4M3)
        self.v8, self.vd = quantize_fp8(v, E4M3)
        self.v_prep = kfp8.prepare_fp8_v(self.v8)
        self.bf16 = [t.to(torch.bfloat16) for t in (q, k, v)]
        self.scale = 1.0 / math.sqrt(d)
        self.flops = 4.0 * length * length * h * d
        self.causal_flops = 4.0 * (length * (length + 1) / 2) * h * d

    def pinned(self, config: triton.Config, causal: bool, lse: bool = False) -> Callable[[], Any]:
        """Our kernel with `config`, V prepared, returning (out, lse) (lse None unless `lse`)."""
        return lambda: kfp8._launch_fwd(
            self.q8, self.k8, self.v_prep, self.qd, self.kd, self.vd, self.scale, causal,
            torch.bfloat16, lse, config=config,
        )  # fmt: skip

    def public(self, v: torch.Tensor, causal: bool = False) -> Callable[[], Any]:
        return lambda: kfp8.fp8_attention(
            self.q8, self.k8, v, self.qd, self.kd, self.vd, causal=causal
        )

    def raw(self, v: torch.Tensor, use_tma: bool) -> Callable[[], Any]:
        """The launcher without the wrapper's V layout enforcement (autotuned)."""
        return lambda: kfp8._launch_fwd(
            self.q8, self.k8, v, self.qd, self.kd, self.vd, self.scale, False, torch.bfloat16,
            False, use_tma=use_tma,
        )  # fmt: skip

    def flex(self, v: torch.Tensor) -> Callable[[], Any]:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        return lambda: flex(self.q8, self.k8, v)

    def gqa_bf16(self) -> Callable[[], Any]:
        from attnverify.kernels import gqa_attention

        return lambda: gqa_attention(*self.bf16)

    def sdpa_bf16(self) -> Callable[[], Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(*self.bf16)

        return run

    def tasks(self) -> dict[str, Callable[[], Any]]:
        """Every compile the timings need, by name (what `precompile` warms the caches with)."""
        out: dict[str, Callable[[], Any]] = {}
        for name, config in SWEEP.items():
            for causal in (False, True):
                out[f"sweep {name} causal={causal}"] = self.pinned(config, causal)
                out[f"sweep {name} causal={causal} lse"] = self.pinned(config, causal, True)
        out["public prepared"] = self.public(self.v_prep)
        out["public causal"] = self.public(self.v_prep, True)
        out["raw row-major ptr"] = self.raw(self.v8, False)
        out["raw row-major tma"] = self.raw(self.v8, True)
        out["raw prepared ptr"] = self.raw(self.v_prep, False)
        out["flex"] = self.flex(self.v8)
        out["gqa bf16"] = self.gqa_bf16()
        return out


# Configs timed side by side at the bench shape (pinned, V prepared), non-causal and causal.
SWEEP = {
    f"{bm}x{bn} w{w} s{s}{f' r{r}' if r else ''}": kfp8._config(bm, bn, w, s, maxnreg=r)
    for bm, bn, w, s, r in (
        (128, 128, 4, 3, None), (128, 128, 4, 2, None), (128, 128, 4, 4, None),
        (64, 128, 4, 3, None), (64, 128, 4, 2, 168), (64, 128, 4, 3, 200),
        (64, 64, 4, 3, None), (64, 64, 4, 3, 168), (64, 64, 4, 4, 168),
        (128, 128, 8, 3, None), (128, 64, 4, 4, None),
    )
}  # fmt: skip
# Timing rounds of the sweep (and ROUNDS + 1 alternating rounds of ours vs flex): medians.
ROUNDS = 2
_WORKER_INPUTS: list[BenchInputs] = []


def _precompile_task(args: tuple[str, int]) -> str:
    """Worker: run one timing task once (Triton and Inductor caches are on disk)."""
    name, length = args
    if not _WORKER_INPUTS:
        _WORKER_INPUTS.append(BenchInputs(torch.device("cuda"), length))
    t0 = time.monotonic()
    try:
        _WORKER_INPUTS[0].tasks()[name]()
        torch.cuda.synchronize()
    except Exception as exc:
        return f"{name}: error {repr(exc)[:300]}"
    return f"{name}: {time.monotonic() - t0:.1f} s"


def precompile(jobs: int, length: int, log: Callable) -> None:
    """Compile every timed kernel in `jobs` processes first: one process compiles serially."""
    names = [f"sweep {n} causal={c}{t}" for n in SWEEP for c in (False, True) for t in ("", " lse")]
    names = ["flex", "gqa bf16", "raw row-major tma", "raw row-major ptr", "raw prepared ptr",
             "public prepared", "public causal", *names]  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    t0 = time.monotonic()
    with ctx.Pool(jobs) as pool:
        for line in pool.imap_unordered(_precompile_task, [(n, length) for n in names]):
            log(f"  precompiled {line}")
    log(f"  precompile: {len(names)} tasks in {time.monotonic() - t0:.0f} s with {jobs} jobs")


def bench(device: torch.device, log: Callable, length: int = 8192) -> dict[str, Any]:
    """Timings at B=1, H=16, L=length, D=128 (module docstring); TFLOP/s from visible pairs.
    Every timed config of ours is first checked against the oracle on the last 512 rows."""
    x = BenchInputs(device, length)
    rows: dict[str, Any] = {}
    refs: dict[bool, tuple] = {}
    sub = slice(max(0, length - 512), length)

    def check(out: torch.Tensor, lse: torch.Tensor, causal: bool) -> dict[str, Any]:
        if causal not in refs:
            xs = {"q": x.q8[:, :, sub], "k": x.k8, "v": x.v8,
                  "q_descale": x.qd, "k_descale": x.kd, "v_descale": x.vd}  # fmt: skip
            ref = oracle(*xs.values(), causal=causal, return_lse=True)
            deq = [dequantize(xs[n], xs[f"{n}_descale"], torch.float32) for n in "qkv"]
            base = attend(*deq, scale=x.scale, causal=causal, compute_dtype=torch.float32,
                          p_dtype=E4M3)  # fmt: skip
            mags = magnitudes(xs, *ref, causal, x.scale)
            refs[causal] = (ref, (base[0].to(torch.bfloat16), base[1]), mags)
        ref, base, mags = refs[causal]
        comps = judge("fp8/bench", "float8_e4m3fn", (out[:, :, sub], lse[:, :, sub]), ref, base,
                      mags, torch.bfloat16, device)  # fmt: skip
        return {c.quantity: {"passed": c.passed, "ratio": c.ratio} for c in comps}

    def timed(name: str, fn: Callable[[], Any], work: float, rep: int = 300, **extra: Any) -> None:
        try:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = _bench(fn, rep)
            rows[name] = {"ms": ms, "tflops": work / ms * 1e-9, **extra}
            log(f"  {name:48s} {ms:8.3f} ms {work / ms * 1e-9:8.1f} TFLOP/s {extra or ''}")
        except Exception as exc:
            rows[name] = {"error": repr(exc)[:800]}
            log(f"  {name:48s} unavailable: {repr(exc)[:300]}")

    log(f"  sweep (pinned configs, V prepared, no lse; {ROUNDS} rounds, checked with lse):")
    checks: dict[tuple[str, bool], Any] = {}
    for name, config in SWEEP.items():
        for causal in (False, True):
            try:
                checks[(name, causal)] = check(*x.pinned(config, causal, True)(), causal)
            except Exception as exc:
                checks[(name, causal)] = {"error": repr(exc)[:300]}
    for r in range(ROUNDS):
        for name, config in SWEEP.items():
            for causal in (False, True):
                work = x.causal_flops if causal else x.flops
                timed(f"[{name}] causal={causal} #{r}", x.pinned(config, causal), work, 150,
                      check=checks[(name, causal)])  # fmt: skip
    for name in SWEEP:
        for causal in (False, True):
            runs = [rows.get(f"[{name}] causal={causal} #{r}", {}) for r in range(ROUNDS)]
            tfs = [t["tflops"] for t in runs if "tflops" in t]
            if tfs:
                rows[f"[{name}] causal={causal}"] = {"tflops": statistics.median(tfs), "runs": tfs}

    log("  public path and baselines:")
    out, lse = kfp8.fp8_attention(x.q8, x.k8, x.v_prep, x.qd, x.kd, x.vd, return_lse=True)
    timed("fp8 ours, V prepared", x.public(x.v_prep), x.flops, check=check(out, lse, False))
    timed("fp8 ours, V row-major (transpose timed in)", x.public(x.v8), x.flops)
    timed("fp8 ours, V row-major, no enforcement (ptr)", x.raw(x.v8, False), x.flops)
    timed("fp8 ours, V row-major, no enforcement (TMA)", x.raw(x.v8, True), x.flops)
    timed("fp8 ours, V prepared, pointer loads", x.raw(x.v_prep, False), x.flops)
    out, lse = kfp8.fp8_attention(x.q8, x.k8, x.v_prep, x.qd, x.kd, x.vd, causal=True,
                                  return_lse=True)  # fmt: skip
    timed("fp8 ours, causal, V prepared", x.public(x.v_prep, True), x.causal_flops,
          check=check(out, lse, True))  # fmt: skip
    v_bytes = 2.0 * x.v8.numel()  # read + write, bytes
    timed("V transpose: prepare_fp8_v (Triton)", lambda: kfp8.prepare_fp8_v(x.v8), v_bytes)
    timed("V transpose: torch strided copy", lambda: x.v8.transpose(-1, -2).contiguous(), v_bytes)
    timed("FlexAttention fp8 (compiled), V row-major", x.flex(x.v8), x.flops)
    timed("FlexAttention fp8 (compiled), V prepared", x.flex(x.v_prep), x.flops)
    timed("bf16 ours (gqa_attention)", x.gqa_bf16(), x.flops)
    timed("bf16 torch SDPA (flash)", x.sdpa_bf16(), x.flops)
    log(f"  ours (public, V prepared) vs flex fp8 (V row-major), alternating, {ROUNDS + 1} rounds:")
    flex = x.flex(x.v8)
    for r in range(ROUNDS + 1):
        timed(f"fp8 ours, V prepared #{r}", x.public(x.v_prep), x.flops)
        timed(f"FlexAttention fp8 (compiled), V row-major #{r}", flex, x.flops)
    tuned = {str(key): str(cfg) for key, cfg in kfp8._fp8_fwd_tuned.cache.items()}
    return {"rows": rows, "autotuned": tuned}


def ratios(rows: dict[str, Any]) -> dict[str, float]:
    def tf(name: str) -> float | None:
        return rows.get(name, {}).get("tflops")

    best = tf("fp8 ours, V prepared")
    flex = tf("FlexAttention fp8 (compiled), V row-major")
    row_major = tf("fp8 ours, V row-major (transpose timed in)")
    pairs = {
        "ours / flex fp8": (best, flex),
        "ours / bf16 ours": (best, tf("bf16 ours (gqa_attention)")),
        "ours / bf16 SDPA flash": (best, tf("bf16 torch SDPA (flash)")),
        "row-major enforced / no enforcement (ptr)": (
            row_major,
            tf("fp8 ours, V row-major, no enforcement (ptr)"),
        ),
        "row-major enforced / no enforcement (TMA)": (
            row_major,
            tf("fp8 ours, V row-major, no enforcement (TMA)"),
        ),
        "prepared / row-major enforced": (best, row_major),
        "causal / non-causal (per visible FLOP)": (tf("fp8 ours, causal, V prepared"), best),
        "TMA / pointer loads (V prepared)": (best, tf("fp8 ours, V prepared, pointer loads")),
        "transpose Triton / torch copy": (
            tf("V transpose: prepare_fp8_v (Triton)"),
            tf("V transpose: torch strided copy"),
        ),
    }
    for r in range(ROUNDS + 1):
        pairs[f"ours / flex fp8 #{r}"] = (
            tf(f"fp8 ours, V prepared #{r}"),
            tf(f"FlexAttention fp8 (compiled), V row-major #{r}"),
        )
    for name in SWEEP:
        nc, c = tf(f"[{name}] causal=False"), tf(f"[{name}] causal=True")
        pairs[f"[{name}] / flex fp8"] = (nc, flex)
        pairs[f"[{name}] causal / non-causal"] = (c, nc)
    return {k: a / b for k, (a, b) in pairs.items() if a and b}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--seconds", type=float, default=200.0, help="correctness time budget")
    parser.add_argument("--per-key", type=int, default=10, help="random shapes per compile key")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--bench-len", type=int, default=8192, help="L of the timed shape")
    parser.add_argument("--jobs", type=int, default=0, help="processes compiling the timed "
                        "kernels before anything runs (0: compile while timing)")  # fmt: skip
    parser.add_argument("--precompile-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch = current_arch(device)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "arch": arch.name,
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    log(f"{report['device']} ({arch.name}), torch {torch.__version__}, triton {triton.__version__}")
    if args.jobs > 0 and device.type == "cuda":
        precompile(args.jobs, args.bench_len, log)
    if args.precompile_only:
        return 0
    log("correctness:")
    t0 = time.monotonic()
    c = correctness(device, args.per_key, t0 + args.seconds, log)
    report["correctness"] = c
    failed = c["failed"] + c["errors"]
    log(f"  {c['run']}/{c['total_planned']} cases, {c['failed']} failed, {c['errors']} errors, "
        f"{c['not_bitwise']} not bitwise across V layouts, worst ratios {c['worst_ratio']}, "
        f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    path = args.out / "fp8_device_check.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    if not args.skip_bench:
        log(f"timings (e4m3, B=1, H=16, L={args.bench_len}, D=128):")
        report["bench"] = bench(device, log, args.bench_len)
        report["ratios"] = ratios(report["bench"].get("rows", {}))
        for name, r in report["ratios"].items():
            log(f"  {name:48s} {r:6.2f}x")
    path.write_text(json.dumps(report, indent=2, default=str))
    (args.out / "fp8_device_check.log").write_text("\n".join(lines) + "\n")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
