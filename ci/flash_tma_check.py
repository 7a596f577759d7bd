"""TMA vs pointer loads of the flash forward and backward (varlen_attention, gqa_attention):
bitwise agreement, oracle checks, speed, and sm90 compile facts.

The forward loads K and V, the backward its inner-loop tiles (Q and dO in the dk/dv pass, K and
V in the dq pass), through TMA descriptors or pointers as `$ATTNVERIFY_FLASH_TMA` says
(`attnverify.kernels._flash.tma_policy`: "0" pointer loads, "1" TMA wherever the layout
allows, "auto" the default per arch); this script sets it per call to run both paths in one
process.

Run from the repository root:

    # on a CUDA machine (H100 / H200), <= 240 s forward, ~150 s backward:
    PYTHONPATH=. python3 ci/flash_tma_check.py --out OUT_DIR
    PYTHONPATH=. python3 ci/flash_tma_check.py --sections backward --out OUT_DIR
    # sm90 compile facts on a machine without a GPU (Triton 3.6 at /work/t36):
    PYTHONPATH=/work/t36/lib/python3.11/site-packages:. TRITON_INTERPRET=0 \\
        TRITON_DISABLE_LINE_INFO=1 python3 ci/flash_tma_check.py --sections compile --out OUT
    # the same for both backward passes (dk/dv, dq):
    PYTHONPATH=/work/t36/lib/python3.11/site-packages:. TRITON_INTERPRET=0 \\
        TRITON_DISABLE_LINE_INFO=1 python3 ci/flash_tma_check.py --sections compile-backward \\
        --out OUT
    # a tiny dry run of the device sections under the interpreter (CPU, float16):
    TRITON_INTERPRET=1 PYTHONPATH=. python3 ci/flash_tma_check.py --dry --out OUT

Sections:
- bench (device): bf16, Hq = Hk = 16, D in 72, 80, 128: (a) dense gqa B=1 L=8192 non-causal,
  (b) varlen lens [1024, 8192, 2048, 4096, 1024, 3072]. Per shape and forward config (pinned,
  `--configs`: the first FWD config, which ATTNVERIFY_AUTOTUNE=0 runs, or all): the kernel
  alone (host work done once) with TMA and with pointer loads; out and lse bitwise equal; both
  checked against the float64 oracle on a slice (tolerance rules of
  `attnverify.verify.tolerance`, as ci/flash_device_check.py); then both timed with
  triton.testing.do_bench (median), TFLOP/s on useful FLOPs (4 * sum(Lq * Lk) * H * D) and
  the ratio TMA / pointer. The public call (ATTNVERIFY_AUTOTUNE=0, host work included) is
  compared bitwise and timed per path too.
- odd (device): correctness only, TMA vs pointer bitwise and TMA vs the oracle: Lk not a
  multiple of the block, D = 8 (pointer loads: its lane tile is wider than D), D = 200, GQA
  Hk = 4, causal (dense and varlen), K/V seq-major (strides not in size order), a varlen with
  a zero-length sequence, and NaN / inf in the K/V rows right after a sequence's end in the
  packed tensors (must not reach that sequence's output).
- backward (device): bf16, D in 72, 80, 128, Hq = Hk = 16, the bench shapes (dense gqa B=1
  L=8192 non-causal, varlen lens [1024, 8192, 2048, 4096, 1024, 3072]): dq, dk, dv through
  torch.autograd.grad of the public function (ATTNVERIFY_AUTOTUNE=0: each pass's first BWD
  config) with TMA and with pointer loads, bitwise equal, both checked against the float64
  oracle on a slice (heads 0-1, every row; varlen: of the 8192-token sequence), then both
  timed: the backward through autograd (forward done once, host work included) and the two
  backward kernels alone (pinned to the first BWD config, host work done once), TFLOP/s on
  useful FLOPs (2.5 * 4 * sum(Lq * Lk) * H * D) and the ratio TMA / pointer. Then the odd
  cases, correctness only (bitwise and the oracle): causal (dense and varlen), GQA Hk = 4,
  D = 200, a zero-length sequence, NaN / inf in the Q, K, V and dO rows right after a
  sequence's end (must not reach that sequence's gradients), gqa with mask and bias (dbias).
- compile (no GPU; TRITON_INTERPRET=0): compile the forward for sm90 at D = 72, 80, 128,
  dense and varlen, every FWD config, TMA and pointer; registers, spills, shared memory and
  the instruction mix of the full-tile KV loop. compile-backward: the same for both backward
  passes, every BWD config (shared memory must stay under the H100 / H200's 232448 bytes).
Before the device sections run, `--workers` processes compile every kernel specialisation they
need in parallel (Triton's on-disk cache), so that compiles do not run one by one.
Writes OUT_DIR/flash_tma_check.json and OUT_DIR/flash_tma_check.log, whose last lines are a
summary table. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import triton

from attnverify.arch import interpreter_active
from attnverify.kernels import _flash, _flash_tiles, _flash_tma
from attnverify.kernels._common import split_head_dim
from attnverify.kernels._flash_offline import (
    compile_inputs,
    compile_sm90,
    ptx_loops,
    ptxas_usage,
    record_launches,
)
from attnverify.kernels.gqa import gqa_attention, gqa_backward, gqa_forward
from attnverify.kernels.varlen import varlen_attention, varlen_backward, varlen_forward
from attnverify.reference.gqa import gqa_attention as gqa_oracle
from attnverify.reference.varlen import varlen_attention as varlen_oracle
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import arch_kind, lookup

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETER_BLOCK = _flash_tiles.INTERPRETER_BLOCK
LOG: list[str] = []


def log(*args: object, sep: str = " ") -> None:
    line = sep.join(str(a) for a in args)
    LOG.append(line)
    print(line, flush=True)


@contextlib.contextmanager
def tma_mode(mode: str) -> Iterator[None]:
    """Run the enclosed calls with `$ATTNVERIFY_FLASH_TMA` = mode ("0" or "1")."""
    old = os.environ.get(_flash.TMA_ENV)
    os.environ[_flash.TMA_ENV] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_flash.TMA_ENV)
        else:
            os.environ[_flash.TMA_ENV] = old


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """One forward call. gqa: q (b, hq, lq, d), k and v (b, hk, lk, d) (`seq_major`: stored
    (b, lk, hk, d)); varlen: packed lens_q / lens_k (lens_k None: lens_q). `poison`: index of
    the sequence whose first K/V rows get NaN, inf and -inf (the rows the previous sequence's
    last tile spans). `bench`: timed, pinned to each config of --configs. `tma`: whether the
    policy must take TMA loads ("1"); D = 8 keeps pointer loads (box wider than D). The
    backward's cases (`backward_cases`) also take gqa's `mask` (b, 1, lq, lk) and `bias`
    (b, hq, lq, lk, with a gradient)."""

    name: str
    kind: str
    d: int
    hq: int = 16
    hk: int = 16
    causal: bool = False
    b: int = 1
    lq: int = 0
    lk: int = 0
    lens_q: tuple[int, ...] = ()
    lens_k: tuple[int, ...] | None = None
    seq_major: bool = False
    poison: int | None = None
    bench: bool = False
    tma: bool = True
    mask: bool = False
    bias: bool = False

    @property
    def keys(self) -> tuple[int, ...]:
        return self.lens_k if self.lens_k is not None else self.lens_q

    @property
    def flops(self) -> float:
        """Useful forward FLOPs, non-causal: 4 * sum(Lq * Lk) * Hq * D."""
        if self.kind == "gqa":
            return 4.0 * self.b * self.lq * self.lk * self.hq * self.d
        return (
            4.0 * sum(a * b for a, b in zip(self.lens_q, self.keys, strict=True)) * self.hq * self.d
        )


BENCH_LENS = (1024, 8192, 2048, 4096, 1024, 3072)


def cases(dry: bool) -> list[Case]:
    """Bench shapes (D = 72, 80, 128, dense then varlen) and the odd correctness cases;
    `dry`: the same list at interpreter size."""
    if dry:
        lens, length, h = (40, 70, 20), 100, 2
    else:
        lens, length, h = BENCH_LENS, 8192, 16
    out = []
    for d in (72, 80, 128):
        out.append(Case(f"gqa D={d} L={length}", "gqa", d, h, h, b=1, lq=length, lk=length,
                        bench=True))  # fmt: skip
        out.append(Case(f"varlen D={d} lens={list(lens)}", "varlen", d, h, h, lens_q=lens,
                        bench=True))  # fmt: skip
    small = 4
    n = 1000 if not dry else 70
    out += [
        Case(f"gqa Lk={n} not a block multiple", "gqa", 128, small, small, lq=n, lk=n),
        Case("gqa D=8 causal Lq>Lk (pointer)", "gqa", 8, small, small, causal=True, lq=n // 2,
             lk=n // 3, tma=False),
        Case("gqa GQA Hk=4", "gqa", 128, 16, 4, lq=n + 37, lk=n + 37),
        Case("gqa causal D=80 B=2", "gqa", 80, small, 2, causal=True, b=2, lq=n, lk=n + 9),
        Case("gqa seq-major K/V", "gqa", 128, small, small, lq=n // 2, lk=n - 3, seq_major=True),
        Case("varlen D=200 causal", "varlen", 200, small, 2, causal=True,
             lens_q=(n // 3, n // 2 + 1, n // 7)),
        Case("varlen causal D=72", "varlen", 72, small, small, causal=True,
             lens_q=(n, n // 27, n // 2)),
        Case("varlen zero-length", "varlen", 72, small, small,
             lens_q=(n // 5, 0, n // 3, n // 20), lens_k=(n // 4, 0, n // 2, 0)),
        Case("varlen NaN after a sequence", "varlen", 72, small, small,
             lens_q=(n // 3 + 1, n // 2 + 17, n // 8), poison=1),
    ]  # fmt: skip
    return out


def selected_cases(sections: list[str], dry: bool) -> list[Case]:
    """The cases of the "bench" and "odd" sections asked for."""
    return [c for c in cases(dry) if ("bench" if c.bench else "odd") in sections]


def cu(lens: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)


def inputs(case: Case, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded q, k, v (and cu_seqlens) of a case, on DEVICE."""
    g = torch.Generator(device=DEVICE).manual_seed(case.d * 7919 + len(case.name))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, generator=g).to(dtype)

    if case.kind == "gqa":
        q = randn(case.b, case.hq, case.lq, case.d)
        if case.seq_major:
            k, v = (randn(case.b, case.lk, case.hk, case.d).transpose(1, 2) for _ in range(2))
        else:
            k, v = (randn(case.b, case.hk, case.lk, case.d) for _ in range(2))
        return {"q": q, "k": k, "v": v}
    q = randn(sum(case.lens_q), case.hq, case.d)
    k, v = (randn(sum(case.keys), case.hk, case.d) for _ in range(2))
    if case.poison is not None:
        row = sum(case.keys[: case.poison])
        k[row], v[row] = float("nan"), float("nan")
        k[row + 1], v[row + 2] = float("inf"), float("-inf")
    return {"q": q, "k": k, "v": v, "cq": cu(case.lens_q, DEVICE), "ck": cu(case.keys, DEVICE)}


def public_call(case: Case, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of the public function."""
    if case.kind == "gqa":
        return gqa_attention(x["q"], x["k"], x["v"], causal=case.causal, return_lse=True)
    return varlen_attention(
        x["q"], x["k"], x["v"], x["cq"], x["ck"], causal=case.causal, return_lse=True
    )


def pinned_kernel(
    case: Case, x: dict[str, torch.Tensor], config: tuple[int, int, int], mode: str
) -> tuple[Callable[[], None], torch.Tensor, torch.Tensor]:
    """The forward kernel alone under `config` (BLOCK_INNER, num_warps, num_stages) with the
    loads of `mode`, its host work (validation, work table, descriptors) done once here:
    (launch, out, lse); out and lse are written by every launch."""
    split = split_head_dim(case.d)
    outer = _flash._outer_block(split, x["q"].dtype, DEVICE == "cpu")
    pinned = _flash.FlashConfig(outer, *config)
    scale = case.d**-0.5
    if case.kind == "gqa":
        call = lambda: gqa_forward(x["q"], x["k"], x["v"], None, None, case.causal, scale,
                                   config=pinned)  # fmt: skip
    else:
        call = lambda: varlen_forward(x["q"], x["k"], x["v"], x["cq"], x["ck"], case.causal,
                                      scale, config=pinned)  # fmt: skip
    with tma_mode(mode):
        launch = record_launches(call)[-1]
    kwargs = launch.pinned_kwargs()
    assert kwargs["USE_TMA"] == (mode == "1"), f"{case.name}: mode {mode} not taken"
    return lambda: launch.kernel.fn[launch.grid](**kwargs), kwargs["Out"], kwargs["Lse"]


# ------------------------------------------------------------------ checks


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same bits (NaN patterns included)."""
    ints = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.shape == b.shape and torch.equal(a.view(ints), b.view(ints))


def _rows_with_keys(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(query rows, key rows) of the varlen sequences the oracle judges: every sequence but
    the poisoned one (its own keys hold NaN)."""
    rows, keys = [], []
    sq, sk = cu(case.lens_q, "cpu").tolist(), cu(case.keys, "cpu").tolist()
    for i in range(len(case.lens_q)):
        if i != case.poison:
            rows.append(torch.arange(sq[i], sq[i + 1]))
            keys.append(torch.arange(sk[i], sk[i + 1]))
    return torch.cat(rows), torch.cat(keys)


def _empty_rows(case: Case, lens_q: tuple[int, ...], lens_k: tuple[int, ...]) -> torch.Tensor:
    """Query rows with no visible key (their out must be exactly 0), packed."""
    rows = []
    for lq, lk in zip(lens_q, lens_k, strict=True):
        i = torch.arange(lq)
        rows.append((i + lk - lq < 0) if case.causal else torch.full((lq,), lk == 0))
    return torch.cat(rows).to(DEVICE)


def oracle_failures(
    case: Case, x: dict[str, torch.Tensor], out: torch.Tensor, lse: torch.Tensor
) -> list[str]:
    """Out and lse against the float64 oracle, judged by the tolerance rules of
    `attnverify.verify.tolerance` relative to the same-precision oracle (as
    ci/flash_device_check.py). Bench shapes: the first 256 query rows (gqa) or of the longest
    sequence (varlen); odd cases: every row (varlen: every sequence but a poisoned one)."""
    dtype = x["q"].dtype
    dtn = str(dtype).removeprefix("torch.")
    q, k, v = x["q"], x["k"], x["v"]
    zeros = None
    if case.kind == "gqa" and case.bench:
        rs = slice(0, 256)
        got = {"out": out[:, :, rs], "lse": lse[:, :, rs]}
        call = lambda cdt: gqa_oracle(q[:, :, rs], k, v, return_lse=True, compute_dtype=cdt)
    elif case.kind == "gqa":
        got = {"out": out, "lse": lse}
        call = lambda cdt: gqa_oracle(q, k, v, causal=case.causal, return_lse=True,
                                      compute_dtype=cdt)  # fmt: skip
        if case.causal and case.lq > case.lk:
            zeros = {"out": torch.arange(case.lq, device=DEVICE)[:, None] < case.lq - case.lk}
    elif case.bench:
        i = max(range(len(case.lens_q)), key=lambda j: case.lens_q[j])
        start, n = sum(case.lens_q[:i]), case.lens_q[i]
        rs, ks = slice(start, start + min(256, n)), slice(start, start + n)
        got = {"out": out[rs], "lse": lse[:, rs]}

        def call(cdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            qd, kd, vd = (y.transpose(0, 1)[None] for y in (q[rs], k[ks], v[ks]))
            o, lz = gqa_oracle(qd, kd, vd, return_lse=True, compute_dtype=cdt)
            return o[0].transpose(0, 1), lz[0]
    else:
        rows, keys = _rows_with_keys(case)
        rows, keys = rows.to(DEVICE), keys.to(DEVICE)
        lens = [n for i, n in enumerate(case.lens_q) if i != case.poison]
        lens_k = [n for i, n in enumerate(case.keys) if i != case.poison]
        got = {"out": out[rows], "lse": lse[:, rows]}
        cq, ck = cu(tuple(lens), DEVICE), cu(tuple(lens_k), DEVICE)
        call = lambda cdt: varlen_oracle(q[rows], k[keys], v[keys], cq, ck, causal=case.causal,
                                         return_lse=True, compute_dtype=cdt)  # fmt: skip
        zeros = {"out": _empty_rows(case, tuple(lens), tuple(lens_k))[:, None, None]}
    ref = dict(zip(("out", "lse"), call(torch.float64), strict=True))
    base = dict(zip(("out", "lse"), call(dtype), strict=True))
    fails = []
    for name, value in got.items():
        rule = lookup(case.kind, dtn, name, arch_kind(value.device))
        qdt = torch.float32 if name == "lse" else dtype
        c = compare(f"{case.kind}/{dtn}/{name}", name, value, ref[name], base[name], rule, qdt,
                    zeros=(zeros or {}).get(name))  # fmt: skip
        if not c.passed:
            fails.append(f"{case.name}: {c}")
    return fails


def agreement(case: Case, results: dict[str, tuple]) -> list[str]:
    """TMA vs pointer, bitwise: out and lse (varlen with a poisoned sequence: the others)."""
    (out_p, lse_p), (out_t, lse_t) = results["0"], results["1"]
    if case.poison is not None:
        rows = _rows_with_keys(case)[0].to(DEVICE)
        out_p, out_t, lse_p, lse_t = out_p[rows], out_t[rows], lse_p[:, rows], lse_t[:, rows]
        if not bool(out_t.isfinite().all()):
            return [f"{case.name}: a non-finite K/V row of the poisoned sequence leaked"]
    fails = []
    for name, a, b in (("out", out_p, out_t), ("lse", lse_p, lse_t)):
        if not bitwise_equal(a, b):
            diff = (a.float() - b.float()).abs().nan_to_num(float("inf")).max().item()
            fails.append(f"{case.name}: {name} TMA != pointer (max |diff| {diff})")
    return fails


# ------------------------------------------------------------------ device sections


def bench_configs(choice: str, dry: bool) -> list[tuple[int, int, int]]:
    """The pinned configs of the bench shapes: the first FWD config (what ATTNVERIFY_AUTOTUNE=0
    runs) or all of them; under the interpreter its one config."""
    if dry:
        return [(_flash_tiles.INTERPRETER_BLOCK, 4, 1)]
    return list(_flash.FWD_CONFIGS[:1] if choice == "first" else _flash.FWD_CONFIGS)


def median_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def run_bench_case(case: Case, dtype: torch.dtype, configs: list, timed: bool) -> list[dict]:
    """Per config: TMA vs pointer bitwise, both against the oracle, then (both verified) both
    timed: median of do_bench, alternating ptr, tma, ptr, tma; the faster round of each
    counts."""
    x = inputs(case, dtype)
    rows = []
    for config in configs:
        row: dict = {"case": case.name, "config": "b{}-w{}-s{}".format(*config)}
        launches = {}
        for mode in ("0", "1"):
            fn, out, lse = pinned_kernel(case, x, config, mode)
            fn()
            launches[mode] = (fn, out, lse)
        wrong = [*oracle_failures(case, x, *launches["0"][1:]),
                 *oracle_failures(case, x, *launches["1"][1:])]  # fmt: skip
        row["failures"] = agreement(case, {m: launches[m][1:] for m in launches}) + wrong
        if timed and not wrong:  # both paths verified (a bitwise mismatch alone still times)
            rounds = {"0": [], "1": []}
            for _ in range(2):
                for mode in ("0", "1"):
                    rounds[mode].append(median_ms(launches[mode][0]))
            ms_p, ms_t = min(rounds["0"]), min(rounds["1"])
            row.update(
                ms_pointer_rounds=rounds["0"], ms_tma_rounds=rounds["1"],
                tflops_pointer=case.flops / ms_p * 1e-9, tflops_tma=case.flops / ms_t * 1e-9,
                tma_over_pointer=ms_p / ms_t,
            )  # fmt: skip
        rows.append(row)
        log(json.dumps(row))
    return rows


def public_timing(case: Case, dtype: torch.dtype, timed: bool) -> dict:
    """The public function with ATTNVERIFY_AUTOTUNE=0 (first config) per load path: bitwise
    agreement, and (timed) TFLOP/s of the whole call, host work (descriptors included) too."""
    x = inputs(case, dtype)
    results, ms = {}, {}
    for mode in ("0", "1"):
        with tma_mode(mode):
            results[mode] = public_call(case, x)
            if timed:
                ms[mode] = median_ms(lambda: public_call(case, x))
    row: dict = {"case": f"public call: {case.name}", "failures": agreement(case, results)}
    if ms:
        row.update(
            tflops_pointer=case.flops / ms["0"] * 1e-9, tflops_tma=case.flops / ms["1"] * 1e-9,
            tma_over_pointer=ms["0"] / ms["1"],
        )  # fmt: skip
    log(json.dumps(row))
    return row


def run_odd_case(case: Case, dtype: torch.dtype) -> dict:
    """The public function per load path (ATTNVERIFY_AUTOTUNE=0): bitwise agreement and the
    oracle (a poisoned varlen sequence: the others, and nothing non-finite leaks)."""
    x = inputs(case, dtype)
    with tma_mode("1"):
        block = _flash_tma._largest_key_block(None)
        taken = _flash_tma._use_tma(x["q"], x["k"], x["v"], case.kind == "varlen", block)
    results = {}
    for mode in ("0", "1"):
        with tma_mode(mode):
            results[mode] = public_call(case, x)
    fails = [] if taken == case.tma else [f"{case.name}: TMA taken {taken}, expected {case.tma}"]
    fails += agreement(case, results) + oracle_failures(case, x, *results["1"])
    row = {"case": case.name, "failures": fails}
    log(json.dumps(row))
    return row


# ------------------------------------------------------------------ backward section


def backward_cases(dry: bool) -> list[Case]:
    """The backward's bench shapes (those of `cases`) and its odd correctness cases; `dry`: at
    interpreter size."""
    out = [c for c in cases(dry) if c.bench]
    small = 4
    n = 1000 if not dry else 70
    out += [
        Case("bwd gqa causal D=80 B=2", "gqa", 80, small, 2, causal=True, b=2, lq=n, lk=n + 9),
        Case("bwd gqa GQA Hk=4", "gqa", 128, 16, 4, lq=n + 37, lk=n + 37),
        Case("bwd gqa mask+bias D=72", "gqa", 72, small, 2, b=2, lq=n - 5, lk=n + 21, mask=True,
             bias=True),
        Case("bwd varlen D=200 causal", "varlen", 200, small, 2, causal=True,
             lens_q=(n // 3, n // 2 + 1, n // 7)),
        Case("bwd varlen causal D=128", "varlen", 128, small, small, causal=True,
             lens_q=(n, n // 27, n // 2)),
        Case("bwd varlen zero-length", "varlen", 72, small, small,
             lens_q=(n // 5, 0, n // 3, n // 20), lens_k=(n // 4, 0, n // 2, 0)),
        Case("bwd varlen NaN after a sequence", "varlen", 72, small, small,
             lens_q=(n // 3 + 1, n // 2 + 17, n // 8), poison=1),
    ]  # fmt: skip
    return out


def selected_backward_cases(sections: list[str], dry: bool) -> list[Case]:
    return backward_cases(dry) if "backward" in sections else []


def bwd_inputs(case: Case, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`inputs` plus do (and gqa's mask and bias where the case has them); a poisoned varlen
    sequence's first Q and dO rows get NaN, inf and -inf too (those of its K and V do)."""
    x = inputs(case, dtype)
    g = torch.Generator(device=DEVICE).manual_seed(case.d * 7907 + len(case.name))
    x["do"] = torch.randn(x["q"].shape, device=DEVICE, generator=g).to(dtype)
    if case.poison is not None:
        row = sum(case.lens_q[: case.poison])
        for t in (x["q"], x["do"]):
            t[row], t[row + 1], t[row + 2] = float("nan"), float("inf"), float("-inf")
    if case.mask:
        x["mask"] = torch.rand(case.b, 1, case.lq, case.lk, device=DEVICE, generator=g) < 0.8
        x["mask"][..., 0] = True  # every row keeps a key
    if case.bias:
        shape = (case.b, case.hq, case.lq, case.lk)
        x["bias"] = torch.randn(shape, device=DEVICE, generator=g).to(dtype)
    return x


def _leaves(case: Case, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The differentiable inputs: q, k, v and (gqa with a bias) bias."""
    names = ("q", "k", "v", "bias") if case.bias else ("q", "k", "v")
    return {n: x[n].detach().requires_grad_() for n in names}


def _forward(case: Case, x: dict[str, torch.Tensor], leaves: dict[str, torch.Tensor]):
    if case.kind == "gqa":
        return gqa_attention(leaves["q"], leaves["k"], leaves["v"], mask=x.get("mask"),
                             bias=leaves.get("bias"), causal=case.causal)  # fmt: skip
    return varlen_attention(leaves["q"], leaves["k"], leaves["v"], x["cq"], x["ck"],
                            causal=case.causal)  # fmt: skip


def backward_graph(case: Case, x: dict[str, torch.Tensor]) -> Callable[[], dict]:
    """The public function's forward, run once here; returns the backward through
    torch.autograd.grad (graph retained: it can run again) -> {"dq", "dk", "dv"[, "dbias"]}."""
    leaves = _leaves(case, x)
    out = _forward(case, x, leaves)

    def run() -> dict[str, torch.Tensor]:
        got = torch.autograd.grad(out, list(leaves.values()), x["do"], retain_graph=True)
        return {f"d{n}": t for n, t in zip(leaves, got, strict=True)}

    return run


def backward_kernels(
    case: Case, x: dict[str, torch.Tensor], mode: str
) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """The two backward kernels alone, pinned to the first BWD config, with the loads of `mode`,
    their host work (delta, work tables, descriptors) done once here: (launch, {"dk": per
    query head dk, "dv": ...}) written by every launch. Bench shapes only (no mask or bias)."""
    split = split_head_dim(case.d)
    outer = _flash._outer_block(split, x["q"].dtype, DEVICE == "cpu")
    if DEVICE == "cpu":
        pinned = _flash.FlashConfig(outer, INTERPRETER_BLOCK, 4, 1)
    else:
        pinned = _flash.FlashConfig(outer, *_flash.BWD_CONFIGS[0])
    scale = case.d**-0.5
    q, k, v, do = x["q"], x["k"], x["v"], x["do"]
    if case.kind == "gqa":
        out, lse = gqa_forward(q, k, v, None, None, case.causal, scale)
        call = lambda: gqa_backward(do, None, q, k, v, out, lse, None, None, case.causal, scale,
                                    False, config_dkdv=pinned, config_dq=pinned)  # fmt: skip
    else:
        out, lse = varlen_forward(q, k, v, x["cq"], x["ck"], case.causal, scale)
        call = lambda: varlen_backward(do, None, q, k, v, out, lse, x["cq"], x["ck"],
                                       case.causal, scale, config_dkdv=pinned,
                                       config_dq=pinned)  # fmt: skip
    with tma_mode(mode):
        passes = record_launches(call)  # the dk/dv pass, then the dq pass
    (grid_dkdv, dkdv), (grid_dq, dq) = ((p.grid, p.pinned_kwargs()) for p in passes)
    for name, kwargs in (("dkdv", dkdv), ("dq", dq)):
        assert kwargs["USE_TMA"] == (mode == "1"), f"{case.name}: {name} mode {mode} not taken"

    def launch() -> None:
        _flash._dkdv.fn[grid_dkdv](**dkdv)
        _flash._dq.fn[grid_dq](**dq)

    return launch, {"dq": dq["DQ"], "dk": dkdv["DK"], "dv": dkdv["DV"]}


def grad_agreement(case: Case, results: dict[str, dict], what: str = "") -> list[str]:
    """TMA vs pointer, bitwise, every gradient (varlen with a poisoned sequence: the others',
    which must be finite)."""
    pointer, tma = dict(results["0"]), dict(results["1"])
    fails = []
    if case.poison is not None:
        rows, keys = (i.to(DEVICE) for i in _rows_with_keys(case))
        for got in (pointer, tma):
            got.update(dq=got["dq"][rows], dk=got["dk"][keys], dv=got["dv"][keys])
        leaked = [n for n, t in tma.items() if not bool(t.isfinite().all())]
        if leaked:
            fails.append(f"{case.name}: a non-finite row of the poisoned sequence leaked into "
                         f"{leaked}")  # fmt: skip
    for name in pointer:
        if not bitwise_equal(pointer[name], tma[name]):
            diff = (pointer[name].float() - tma[name].float()).abs().nan_to_num(float("inf"))
            fails.append(f"{case.name}{what}: {name} TMA != pointer (max |diff| "
                         f"{diff.max().item()})")  # fmt: skip
    return fails


def _oracle_grads(fn: Callable, xs: dict[str, torch.Tensor], do: torch.Tensor) -> dict:
    leaves = {n: t.detach().requires_grad_() for n, t in xs.items()}
    out = fn(**leaves)
    got = torch.autograd.grad(out, list(leaves.values()), do.to(out.dtype))
    return {f"d{n}": t for n, t in zip(leaves, got, strict=True)}


def grad_oracle_failures(case: Case, x: dict[str, torch.Tensor], got: dict) -> list[str]:
    """dq, dk, dv (and dbias) against the float64 oracle, judged by the tolerance rules of
    `attnverify.verify.tolerance` relative to the same-precision oracle, gradients relative to
    their largest magnitude (as the kernel tests' `judge`). Bench shapes: heads 0-1, every row
    (varlen: of the longest sequence); odd cases: everything (varlen: every sequence but a
    poisoned one)."""
    dtype = x["q"].dtype
    dtn = str(dtype).removeprefix("torch.")
    q, k, v, do = x["q"], x["k"], x["v"], x["do"]
    heads = slice(0, 2)
    if case.kind == "gqa":
        if case.bench:
            xs = {"q": q[:, heads], "k": k[:, heads], "v": v[:, heads]}
            dos, got = do[:, heads], {n: t[:, heads] for n, t in got.items()}
        else:
            xs = {"q": q, "k": k, "v": v, **({"bias": x["bias"]} if case.bias else {})}
            dos = do

        def call(**kw: object) -> dict:
            fn = lambda **t: gqa_oracle(**t, mask=x.get("mask"), causal=case.causal, **kw)
            return _oracle_grads(fn, xs, dos)
    else:
        if case.bench:
            i = max(range(len(case.lens_q)), key=lambda j: case.lens_q[j])
            start, n = sum(case.lens_q[:i]), case.lens_q[i]
            rows = keys = torch.arange(start, start + n, device=DEVICE)
            lens, lens_k = (n,), (n,)
            hs = heads
        else:
            rows, keys = (t.to(DEVICE) for t in _rows_with_keys(case))
            lens = tuple(n for i, n in enumerate(case.lens_q) if i != case.poison)
            lens_k = tuple(n for i, n in enumerate(case.keys) if i != case.poison)
            hs = slice(None)
        xs = {"q": q[rows, hs], "k": k[keys, hs], "v": v[keys, hs]}
        dos = do[rows, hs]
        got = {"dq": got["dq"][rows, hs], "dk": got["dk"][keys, hs], "dv": got["dv"][keys, hs]}
        cq, ck = cu(lens, DEVICE), cu(lens_k, DEVICE)

        def call(**kw: object) -> dict:
            fn = lambda **t: varlen_oracle(**t, cu_seqlens_q=cq, cu_seqlens_k=ck,
                                           causal=case.causal, **kw)  # fmt: skip
            return _oracle_grads(fn, xs, dos)

    ref, base = call(), call(compute_dtype=dtype)
    gmag = max((float(ref[n].abs().max()) for n in got if ref[n].numel()), default=0.0)
    fails = []
    for name, value in got.items():
        rule = lookup(case.kind, dtn, name, arch_kind(value.device))
        c = compare(f"{case.kind}/{dtn}/{name}", name, value, ref[name], base[name], rule, dtype,
                    magnitude=gmag)  # fmt: skip
        if not c.passed:
            fails.append(f"{case.name}: {c}")
    return fails


def run_backward_case(case: Case, dtype: torch.dtype, timed: bool) -> list[dict]:
    """Per load path the public function's gradients (ATTNVERIFY_AUTOTUNE=0): bitwise
    agreement and the oracle; bench shapes then the backward kernels alone, bitwise too, and
    (both paths verified) both timed, through autograd and as the kernels alone: median of
    do_bench, alternating pointer, TMA, pointer, TMA; the faster round of each counts."""
    x = bwd_inputs(case, dtype)
    with tma_mode("1"):
        taken = [_flash_tma._bwd_descriptors(a, b, x["q"], names, case.kind == "varlen", None,
                                         has_bias=False)[0]
                 for a, b, names in ((x["q"], x["do"], _flash.QDO_DESC_NAMES),
                                     (x["k"], x["v"], _flash.KV_DESC_NAMES))]  # fmt: skip
    fails = [] if all(taken) else [f"{case.name}: TMA taken (dk/dv, dq) {taken}, expected both"]
    graphs, results = {}, {}
    for mode in ("0", "1"):
        with tma_mode(mode):
            graphs[mode] = backward_graph(case, x)
            results[mode] = graphs[mode]()
    wrong = grad_oracle_failures(case, x, results["1"])
    if case.bench:
        wrong += grad_oracle_failures(case, x, results["0"])
    fails += grad_agreement(case, results) + wrong
    rows = [{"case": f"backward: {case.name}", "config": "autograd", "failures": fails}]
    if case.bench:
        kernels = {m: backward_kernels(case, x, m) for m in ("0", "1")}
        for m in kernels:
            kernels[m][0]()
        kept = {m: kernels[m][1] for m in kernels}
        b, w, st = _flash.BWD_CONFIGS[0] if DEVICE == "cuda" else (INTERPRETER_BLOCK, 4, 1)
        rows.append({"case": f"backward kernels: {case.name}", "config": f"b{b}-w{w}-s{st}",
                     "failures": grad_agreement(case, kept, " (kernels)")})  # fmt: skip
    if timed and case.bench and not wrong:
        flops = 2.5 * case.flops
        for row, fns in zip(rows, ({m: (lambda m=m: graphs[m]()) for m in graphs},
                                   {m: kernels[m][0] for m in kernels}), strict=True):  # fmt: skip
            rounds = {"0": [], "1": []}
            for _ in range(2):
                for mode in ("0", "1"):
                    with tma_mode(mode):
                        rounds[mode].append(median_ms(fns[mode]))
            ms_p, ms_t = min(rounds["0"]), min(rounds["1"])
            row.update(
                ms_pointer_rounds=rounds["0"], ms_tma_rounds=rounds["1"],
                tflops_pointer=flops / ms_p * 1e-9, tflops_tma=flops / ms_t * 1e-9,
                tma_over_pointer=ms_p / ms_t,
            )  # fmt: skip
    for row in rows:
        log(json.dumps(row))
    return rows


def warm_tasks(
    all_cases: list[Case], bwd_cases: list[Case], configs: list
) -> list[tuple[str, int, str, tuple | None]]:
    """(pass, case index, mode, config or None for the public call): one per kernel
    specialisation the run compiles, in the order the run meets them; pass "fwd" indexes
    `all_cases`, "bwd" `bwd_cases` (the public call's backward, and the backward kernels
    pinned to the first BWD config)."""
    tasks = []
    for i, case in enumerate(all_cases):
        for mode in ("0", "1"):
            # a bench shape's public call runs the first config, pinned among `configs`
            tasks += (
                [("fwd", i, mode, c) for c in configs] if case.bench else [("fwd", i, mode, None)]
            )
    for i, _ in enumerate(bwd_cases):
        tasks += [("bwd", i, mode, None) for mode in ("0", "1")]
    return tasks


def warm_shard(all_cases: list[Case], bwd_cases: list[Case], configs: list,
               dtype: torch.dtype, shard: int, shards: int) -> None:  # fmt: skip
    """Compile (by launching once) every `shards`-th specialisation from `shard` on: worker
    processes fill Triton's on-disk cache in parallel, the main process then loads them."""
    for kind, i, mode, config in warm_tasks(all_cases, bwd_cases, configs)[shard::shards]:
        if kind == "bwd":
            case = bwd_cases[i]
            x = bwd_inputs(case, dtype)
            with tma_mode(mode):
                backward_graph(case, x)()
            if case.bench:
                backward_kernels(case, x, mode)[0]()
            continue
        case = all_cases[i]
        x = inputs(case, dtype)
        if config is None:
            with tma_mode(mode):
                public_call(case, x)
        else:
            pinned_kernel(case, x, config, mode)[0]()
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def warm(args: argparse.Namespace, n_tasks: int) -> None:
    """Run `warm_shard` in worker processes (compile in parallel); a failed worker is logged,
    the main process then compiles what it left."""
    shards = max(1, min(args.workers, n_tasks))
    cmd = [sys.executable, __file__, "--configs", args.configs, "--sections", args.sections,
           "--warm-shards", str(shards), *(["--dry"] if args.dry else [])]  # fmt: skip
    env = {**os.environ, "ATTNVERIFY_AUTOTUNE": "0"}
    procs = []
    for i in range(shards):
        worker = [*cmd, "--warm-shard", str(i)]
        procs.append(subprocess.Popen(worker, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    for i, proc in enumerate(procs):
        text, _ = proc.communicate()
        if proc.returncode:
            log(f"warm worker {i} exited {proc.returncode}: {text[-1500:]}")


# ------------------------------------------------------------------ sm90 compile facts


def _mix(body: list[str]) -> dict[str, int]:
    """Counts of the load and address instructions of a loop body."""
    mix = Counter(body)

    def count(pred: Callable[[str], bool]) -> int:
        return sum(n for op, n in mix.items() if pred(op))

    return {
        "instructions": len(body),
        "cp.async (pointer)": count(lambda op: op.startswith("cp.async.cg")),
        "cp.async.bulk.tensor (TMA)": count(lambda op: op.startswith("cp.async.bulk.tensor")),
        "mbarrier": count(lambda op: op.startswith("mbarrier")),
        "add.s32": mix["add.s32"],
        "add.s64": mix["add.s64"],
        "wgmma.mma_async": count(lambda op: op.startswith("wgmma.mma_async")),
    }


def compile_fwd_sm90(d: int, varlen: bool, config: _flash.FlashConfig, tma: bool) -> dict:
    """Compile the forward exactly as `flash_forward` launches it (bf16, non-causal, no mask or
    bias, loads per `tma`) for sm90 with Triton's own binder, without a GPU; registers, spills,
    shared memory and the instruction mix of the full-tile KV loop (the first PTX loop)."""
    q, problem, _ = compile_inputs(d, varlen)
    with tma_mode("1" if tma else "0"):
        launch = record_launches(lambda: _flash.flash_forward(q, q, q, problem, config=config))[-1]
    assert launch.kwargs["USE_TMA"] == tma, f"the launch did not take the {tma=} path"
    compiled = compile_sm90(launch)
    registers, spills = ptxas_usage(compiled.asm["ptx"])
    loops = ptx_loops(compiled.asm["ptx"])
    return {
        "D": d, "varlen": varlen, "tma": tma,
        "config": f"b{config.block_inner}-w{config.num_warps}-s{config.num_stages}",
        "registers": registers, "spill_bytes": spills, "shared_bytes": compiled.metadata.shared,
        "loops": len(loops),
        "full_tile_loop": _mix(loops[0]) if loops else {},
        "masked_tile_loop": _mix(loops[1]) if len(loops) > 1 else {},
    }  # fmt: skip


def sm90_facts() -> list[dict]:
    """Compile facts of both load paths at D = 72, 80, 128, varlen and dense, every FWD
    config (BLOCK_OUTER 128, as `flash_forward` picks for bf16 at these head dims)."""
    facts = []
    for d in (72, 80, 128):
        for b, w, st in _flash.FWD_CONFIGS:
            for varlen in (False, True):
                for tma in (False, True):
                    config = _flash.FlashConfig(128, b, w, st)
                    facts.append(compile_fwd_sm90(d, varlen, config, tma))
                    log(json.dumps(facts[-1]))
    return facts


SHARED_LIMIT = 232448  # bytes of shared memory a block may use on an H100 / H200


def compile_bwd_sm90(d: int, varlen: bool, config: _flash.FlashConfig, tma: bool) -> list[dict]:
    """Compile both backward passes exactly as `flash_backward` launches them (bf16,
    non-causal, no mask or bias, both pinned to `config`, loads per `tma`) for sm90 without a
    GPU: per pass registers, spills, shared memory (and whether it fits SHARED_LIMIT), and the
    instruction mix of every loop (dk/dv: masked, full, masked query tiles; dq: full, masked
    key tiles)."""
    q, problem, lse = compile_inputs(d, varlen)
    with tma_mode("1" if tma else "0"):
        passes = record_launches(lambda: _flash.flash_backward(
            q, q, q, q, q, lse, None, problem, config_dkdv=config, config_dq=config,
        ))  # fmt: skip
    facts = []
    for name, launch in zip(("dkdv", "dq"), passes, strict=True):
        assert launch.kwargs["USE_TMA"] == tma, f"the {name} launch did not take the {tma=} path"
        compiled = compile_sm90(launch)
        ptx = compiled.asm["ptx"]
        registers, spills = ptxas_usage(ptx)
        facts.append({
            "pass": name, "D": d, "varlen": varlen, "tma": tma,
            "config": f"b{config.block_inner}-w{config.num_warps}-s{config.num_stages}",
            "first_config": (config.block_inner, config.num_warps, config.num_stages)
            == _flash.BWD_CONFIGS[0],
            "registers": registers, "spill_bytes": spills,
            "shared_bytes": compiled.metadata.shared,
            "fits": compiled.metadata.shared <= SHARED_LIMIT,
            "loops": [_mix(body) for body in ptx_loops(ptx)],
        })  # fmt: skip
    return facts


def sm90_backward_facts() -> list[dict]:
    """Compile facts of both backward passes, both load paths, at D = 72, 80, 128, varlen and
    dense, every BWD config (BLOCK_OUTER 128, as `flash_backward` picks for bf16 at these
    head dims)."""
    facts = []
    for d in (72, 80, 128):
        for b, w, st in _flash.BWD_CONFIGS:
            for varlen in (False, True):
                for tma in (False, True):
                    config = _flash.FlashConfig(128, b, w, st)
                    for fact in compile_bwd_sm90(d, varlen, config, tma):
                        facts.append(fact)
                        log(json.dumps({k: v for k, v in fact.items() if k != "loops"}))
    return facts


# ------------------------------------------------------------------ main


def guarded(fn: Callable, *args: object) -> object:
    """Run one part; a crash is logged with its traceback (and counted as a failure)."""
    try:
        return fn(*args)
    except Exception:
        log(traceback.format_exc())
        return {"failures": [traceback.format_exc()[-2000:]]}


def device_sections(args: argparse.Namespace, sections: list[str]) -> dict:
    """bench, odd and backward: every row carries its failures (empty: passed)."""
    os.environ["ATTNVERIFY_AUTOTUNE"] = "0"  # public calls: the first config, as the workers
    dtype = torch.float16 if args.dry else torch.bfloat16
    all_cases = selected_cases(sections, args.dry)
    bwd_cases = selected_backward_cases(sections, args.dry)
    configs = bench_configs(args.configs, args.dry)
    if args.workers > 0:
        start = time.time()
        warm(args, len(warm_tasks(all_cases, bwd_cases, configs)))
        log(f"warm-up compile: {time.time() - start:.0f}s")
    timed = DEVICE == "cuda"
    res: dict = {"bench": [], "public": [], "odd": [], "backward": []}
    for case in all_cases:
        if case.bench:
            res["bench"] += guarded(run_bench_case, case, dtype, configs, timed)
            res["public"].append(guarded(public_timing, case, dtype, timed))
        else:
            res["odd"].append(guarded(run_odd_case, case, dtype))
    for case in bwd_cases:
        rows = guarded(run_backward_case, case, dtype, timed)
        res["backward"] += rows if isinstance(rows, list) else [rows]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="bench,odd,backward",
                    help="bench, odd, backward, compile, compile-backward")  # fmt: skip
    ap.add_argument("--configs", default="first", choices=("first", "all"),
                    help="bench shapes pinned to the first FWD config or to each of them")  # fmt: skip
    ap.add_argument("--workers", type=int, default=None,
                    help="processes compiling the kernels in parallel first (0: none; default "
                         "12 or the cores, 0 with --dry)")  # fmt: skip
    ap.add_argument("--dry", action="store_true",
                    help="interpreter-size shapes, float16, no timing (TRITON_INTERPRET=1)")  # fmt: skip
    ap.add_argument("--warm-shard", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warm-shards", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workers is None:
        args.workers = 0 if args.dry else min(12, os.cpu_count() or 1)
    sections = args.sections.split(",")
    if args.warm_shard is not None:
        dtype = torch.float16 if args.dry else torch.bfloat16
        all_cases = selected_cases(sections, args.dry)
        bwd_cases = selected_backward_cases(sections, args.dry)
        warm_shard(all_cases, bwd_cases, bench_configs(args.configs, args.dry), dtype,
                   args.warm_shard, args.warm_shards)  # fmt: skip
        return 0
    if args.dry and not interpreter_active():
        raise SystemExit("--dry runs the kernels under the interpreter: set TRITON_INTERPRET=1")
    start = time.time()
    results: dict = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "command": " ".join(sys.argv),
    }
    log(results["device"], results["versions"])
    failures: list[str] = []
    if "compile" in sections:
        results["compile"] = guarded(sm90_facts)
        if isinstance(results["compile"], dict):
            failures += results["compile"]["failures"]
    if "compile-backward" in sections:
        results["compile_backward"] = guarded(sm90_backward_facts)
        if isinstance(results["compile_backward"], dict):
            failures += results["compile_backward"]["failures"]
        else:
            failures += [f"shared memory: {r}" for r in results["compile_backward"]
                         if r["first_config"] and not r["fits"]]  # fmt: skip
    if any(name in sections for name in ("bench", "odd", "backward")):
        res = device_sections(args, sections)
        results.update(res)
        for row in (*res["bench"], *res["public"], *res["odd"], *res["backward"]):
            failures += row.get("failures", [])
    results["failures"] = failures
    results["passed"] = not failures
    for row in (*results.get("bench", []), *results.get("public", []),
                *results.get("backward", [])):  # fmt: skip
        if "tma_over_pointer" in row:
            log("{:58s} {:>11s} pointer {:6.1f} TMA {:6.1f} TFLOP/s  TMA/pointer {:.3f}".format(
                row["case"], row.get("config", "autotune=0"), row["tflops_pointer"],
                row["tflops_tma"], row["tma_over_pointer"]))  # fmt: skip
    results["wall_s"] = time.time() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "flash_tma_check.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    log(f"failures: {len(failures)}", *failures, sep="\n")
    log(f"passed: {results['passed']}  wall: {results['wall_s']:.0f}s")
    with open(os.path.join(args.out, "flash_tma_check.log"), "w") as fh:
        fh.write("\n".join(LOG) + "\n")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
