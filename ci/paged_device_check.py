"""Device check of the paged-KV kernels: correctness vs the float64 oracle, then timings.

Run on a CUDA device from the repository root:

    PYTHONPATH=. python3 ci/paged_device_check.py --out "$OUT" [--sections warm,sweep,...]

Sections (run in the order warm, graph, sweep, targets, correctness; `--sections` picks):
- warm: compile every kernel specialisation the later sections launch, in parallel worker
  processes (Triton's disk cache then serves this process): compiles dominate a device run.
- correctness: randomized cases (bf16 / fp16 / fp8 e4m3 / e5m2 caches, block sizes 8..256,
  split counts 1..64, Lq 1..16, NHD / HND, D including non-powers of two, NaN in every unused
  cache slot, -1 and out-of-range ids in unused block-table entries, zero-length requests),
  judged by `attnverify.verify.compare` with the `paged` / `merge` tolerance rules; each case
  also runs one of ALT_CONFIGS through `launch_paged`; one case with block offsets past 2^31.
- sweep: launch settings (SWEEP) x split counts for fp8 and bf16 caches at context 32768
  (B = 1 and 32) and 131072 (B = 1), block 16 and 64; each setting first passes an oracle
  check on a poisoned cache of the same specialisation.
- targets: issue 8's table with the default path: bf16 B=32 ctx 8192 against SDPA cuDNN /
  flash on the same KV stored contiguously, B=1 ctx 131072 against the copy bandwidth and
  num_splits=1, fp8 against bf16 at ctx 32768, Lq = 4, B=1 ctx 1024, the merge share, and
  the public path (`paged_attention`, validation every call) against the launcher path
  (`plan_paged` once, `launch_paged` timed).
- graph: `launch_paged` captured in a CUDA graph replays the eager result bit for bit, also
  after new lengths and queries are copied into the captured inputs; replay timing.
Timings: triton.testing.do_bench medians with L2 flushed between calls, all in this process.
Results and their reading: ci/notes_paged.md.

Writes `paged_device.jsonl` (one JSON object per result) and `paged_device.log` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import triton
import triton.runtime.errors
from triton.testing import do_bench, do_bench_cudagraph

from attnverify.arch import current_arch
from attnverify.kernels.paged import (
    MIN_BLOCK_M,
    PagedConfig,
    launch_merge,
    launch_paged,
    merge_attention_states,
    paged_attention,
    pick_config,
    plan_paged,
)
from attnverify.reference import paged as ref
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import lookup

HQ, HK, D = 32, 8, 128


def named_config(name: str) -> PagedConfig:
    """ "bn128-w4-s5" -> PagedConfig(block_n=128, num_warps=4, num_stages=5); optional further
    parts: "r128" caps the registers per thread (maxnreg), "cast" / "bits" / "ptx" name how an
    fp8 cache becomes float16 (`PagedConfig.fp8_convert`; default "ptx"). The merge launches
    as `pick_config` has it on this device (`PagedConfig.dependent_merge`), so a setting and
    the default differ only in what the name says."""
    bn, w, st, *rest = name.split("-")
    maxnreg = next((int(p[1:]) for p in rest if p.startswith("r")), None)
    convert = next((p for p in rest if p in ("cast", "bits", "ptx")), "ptx")
    dependent = pick_config(64, D, torch.bfloat16, current_arch()).dependent_merge
    return PagedConfig(int(bn[2:]), int(w[1:]), int(st[1:]), maxnreg, convert, dependent)


# Launch settings timed by the sweep, per cache dtype. fp8: K / V read as 32-bit words and
# converted in registers ("ptx") against Triton's element loads ("cast": fp8 bytes staged in
# shared memory and read into the dot operands byte by byte). The 2026-11-21 H200 sweep
# (ci/notes_paged.md) made pick_config's default "bn64-w4-s5-r128" with "ptx" for pages of 16
# and with "cast" for pages of 64; the session-17 H100 sweep moved one 16-row tile to 2 warps
# ("bn64-w2-s5", first here); a 16-bit dot-operand variant of the word loads was slower
# everywhere (0.73-1.14x bf16) and was removed. Stages >= 5 give the K / V tiles two buffers
# (the block-table read takes a pipeline stage; stages 2..4 give one). sm90, triton 3.6,
# D = 128, block 16 (ptxas -v; "issue": SASS loop instructions x warps per 64 keys; programs
# per SM by registers and shared memory):
#   bn64-w4-s5-r128     128 regs, 55 KB, 4 programs, issue 2800
#   bn32-w4-s5-r128      97 regs, 29 KB, 4 programs, issue 3232
#   bn128-w4-s3         152 regs, 73 KB, 3 programs (one buffer), issue 2244
#   bn128-w4-s5         154 regs, 105 KB, 2 programs, issue 2286
#   bf16 bn64-w4-s3: issue 2596; element path bn64-w4-s5-r128-cast: issue 3596.
SWEEP = {
    "float8_e4m3fn": [
        "bn64-w2-s5-ptx",
        "bn64-w2-s5-cast",
        "bn64-w4-s5-r128",
        "bn64-w4-s5-r128-cast",
        "bn32-w4-s5-r128",
        "bn128-w4-s3",
        "bn128-w4-s5",
    ],
    "float8_e5m2": ["bn64-w4-s5-r128", "bn64-w4-s5-r128-cast"],
    "bfloat16": ["bn64-w4-s3"],
}
# Launch settings checked beside the default on each random correctness case ("bits": the
# portable integer conversion, run on the GPU).
ALT_CONFIGS = [
    (n, named_config(n))
    for n in ("bn64-w4-s5-r128-cast", "bn64-w4-s5-r128", "bn64-w4-s3-bits", "bn32-w4-s5-r128")
]
DEVICE = "cuda"  # --device cpu: a dry run under TRITON_INTERPRET=1 (tiny shapes, no timing)
DRY = False
DEADLINE = math.inf  # wall-clock time after which timing sections are skipped
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


class Log:
    """Lines to stdout and the log file; results as JSON lines."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.text = (out / "paged_device.log").open("w")
        self.jsonl = (out / "paged_device.jsonl").open("w")

    def line(self, msg: str) -> None:
        print(msg, flush=True)
        self.text.write(msg + "\n")
        self.text.flush()

    def record(self, **row: object) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()


# ---------------------------------------------------------------- inputs


def make_cache(
    gen: torch.Generator,
    seq_lens: list[int],
    *,
    block_size: int,
    hk: int,
    head_dim: int,
    dtype: torch.dtype,
    layout: str,
    spare: int = 3,
    poison: bool = True,
    device: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """k_cache, v_cache, block_tables, seq_lens: a shuffled pool, NaN in unused slots."""
    pages = [-(-n // block_size) for n in seq_lens]
    max_blocks = max([*pages, 1]) + 2
    num_blocks = sum(pages) + spare
    shape = (
        (num_blocks, block_size, hk, head_dim)
        if layout == "NHD"
        else (num_blocks, hk, block_size, head_dim)
    )
    device = device or DEVICE
    store = torch.bfloat16 if dtype in FP8 else dtype
    k = torch.randn(shape, generator=gen, device=device).to(store)
    v = torch.randn(shape, generator=gen, device=device).to(store)
    perm = torch.randperm(num_blocks, generator=gen, device=device).int()
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32, device=device)
    used = 0
    for b, (n, p) in enumerate(zip(seq_lens, pages, strict=True)):
        tables[b, :p] = perm[used : used + p]
        tables[b, p : p + 1] = num_blocks + 7  # junk past the used pages
        used += p
        if poison and n % block_size:
            last = int(tables[b, p - 1])
            slot = slice(n % block_size, None)
            for cache in (k, v):
                if layout == "NHD":
                    cache[last, slot] = float("nan")
                else:
                    cache[last, :, slot] = float("nan")
    if poison:  # spare blocks are never referenced: all NaN
        for blk in perm[used:].tolist():
            k[blk] = float("nan")
            v[blk] = float("nan")
    if dtype in FP8:
        k, v = k.to(dtype), v.to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return k, v, tables, lens


# ---------------------------------------------------------------- correctness


def judge(case: str, dtype: torch.dtype, out, lse, ref_out, ref_lse, base_out, base_lse) -> list:
    """Compare out and lse with the oracle; rows the oracle leaves empty must be exactly 0."""
    name = str(dtype).removeprefix("torch.")
    arch = "interpreter" if DRY else "gpu"
    empty = torch.isneginf(ref_lse)
    zero_ok = bool((out[empty] == 0).all())
    comps = [
        compare(
            f"paged/{name}/out[{case}]",
            "out",
            out,
            ref_out,
            base_out,
            lookup("paged", name, "out", arch),
            out.dtype,
        ),
        compare(
            f"paged/{name}/lse[{case}]",
            "lse",
            lse,
            ref_lse,
            base_lse,
            lookup("paged", name, "lse", arch),
            torch.float32,
        ),
    ]
    if not zero_ok:
        comps[0].passed = False
        comps[0].reason += "; rows with no visible key are not exactly 0"
    return comps


def correctness(
    log: Log, num_cases: int, seed: int, big: bool = True, budget_s: float = math.inf
) -> int:
    rng = random.Random(seed)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    failures = 0
    worst: dict[str, float] = {}
    bf16 = torch.float16 if DRY else torch.bfloat16  # the interpreter's bf16 dot is wrong
    dtypes = [bf16, torch.float16, *FP8, bf16]
    stop = time.time() + budget_s
    done = 0
    for idx in range(num_cases):
        if time.time() > stop:
            log.line(f"correctness: time budget reached after {idx} cases")
            break
        done += 1
        cache_dtype = dtypes[idx % len(dtypes)]
        q_dtype = torch.bfloat16 if cache_dtype in FP8 else cache_dtype
        block_size = 2 ** rng.randint(3, 8)
        hk = rng.choice([1, 2, 4, 8])
        group = rng.choice([1, 2, 4, 8])
        head_dim = rng.choice([64, 128, 128, 72, 96, 256, 8, 136])
        lq = rng.choice([1, 1, 2, 3, 4, 8, 16])
        b = rng.randint(1, 5)
        lens = [
            rng.choice([0, lq, rng.randint(1, 900), block_size * rng.randint(1, 6)])
            for _ in range(b)
        ]
        lens = [max(n, 0) for n in lens]
        splits = rng.choice([None, 1, 2, 3, 5, 8, 16, 33, 64])
        layout = rng.choice(["NHD", "HND"])
        k, v, tables, seq_lens = make_cache(
            gen,
            lens,
            block_size=block_size,
            hk=hk,
            head_dim=head_dim,
            dtype=cache_dtype,
            layout=layout,
        )
        q = torch.randn(b, hk * group, lq, head_dim, generator=gen, device=DEVICE).to(q_dtype)
        kd = vd = None
        if cache_dtype in FP8:
            kd = torch.rand(hk if rng.random() < 0.5 else (), generator=gen, device=DEVICE) + 0.25
            vd = torch.rand(hk if rng.random() < 0.5 else (), generator=gen, device=DEVICE) + 0.25
        kwargs = dict(k_descale=kd, v_descale=vd, kv_layout=layout)
        out, lse = paged_attention(
            q, k, v, tables, seq_lens, num_splits=splits, return_lse=True, **kwargs
        )
        ref_out, ref_lse = ref.paged_attention(q, k, v, tables, seq_lens, return_lse=True, **kwargs)
        base_out, base_lse = ref.paged_attention(
            q, k, v, tables, seq_lens, return_lse=True, compute_dtype=q_dtype, **kwargs
        )
        desc = (
            f"{idx}:{str(cache_dtype).removeprefix('torch.')} bs={block_size} Hk={hk} G={group} "
            f"D={head_dim} Lq={lq} lens={lens} splits={splits} {layout}"
        )
        comps = judge(desc, cache_dtype, out, lse, ref_out, ref_lse, base_out, base_lse)
        alt_name, alt = ALT_CONFIGS[idx % len(ALT_CONFIGS)]
        if head_dim > 128:
            alt = replace(alt, block_n=min(alt.block_n, 64))
        if group * lq > MIN_BLOCK_M:
            # as pick_config: the register cap is for one 16-row tile (larger ones need more
            # registers than the cap: ptxas refuses D 136, 64 rows under 128)
            alt = replace(alt, maxnreg=None)
        try:
            plan = plan_paged(q, k, v, tables, seq_lens, num_splits=splits, config=alt, **kwargs)
            alt_out, alt_lse = launch_paged(
                q,
                k,
                v,
                tables,
                seq_lens,
                kd,
                vd,
                scale=plan.scale,
                num_splits=plan.num_splits,
                kv_layout=layout,
                config=alt,
            )
            comps += judge(
                desc + f" config={alt_name}",
                cache_dtype,
                alt_out,
                alt_lse,
                ref_out,
                ref_lse,
                base_out,
                base_lse,
            )
        except triton.runtime.errors.OutOfResources as exc:
            log.line(f"{desc} config={alt_name}: skipped, {exc}")
        ok = all(c.passed for c in comps)
        for c in comps:
            key = f"{str(cache_dtype).removeprefix('torch.')}/{c.quantity}"
            worst[key] = max(worst.get(key, 0.0), c.ratio if math.isfinite(c.ratio) else 0.0)
        log.record(kind="case", case=desc, passed=ok, ratios=[c.ratio for c in comps])
        if not ok:
            failures += 1
            for c in comps:
                if not c.passed:
                    log.line(str(c))
    failures += merge_cases(log, rng, gen, worst)
    if big:
        failures += big_offset_case(log, gen)
    log.line(f"correctness: {done} paged cases + merge + int64 case, {failures} failures")
    log.line("worst ratios (impl err / baseline err): " + json.dumps(worst))
    log.record(kind="correctness", cases=done, failures=failures, worst=worst)
    return failures


def merge_cases(log: Log, rng: random.Random, gen: torch.Generator, worst: dict) -> int:
    failures = 0
    for idx in range(24):
        dtype = [torch.float32, torch.bfloat16, torch.float16][idx % 3]
        lead = (rng.randint(1, 4), rng.randint(1, 40))
        s = rng.choice([1, 2, 3, 17, 64, 130])
        head_dim = rng.choice([8, 64, 72, 128, 256])
        out = torch.randn(*lead, s, head_dim, generator=gen, device=DEVICE).to(dtype)
        lse = torch.randn(*lead, s, generator=gen, device=DEVICE) * 5
        dead = torch.rand(*lead, s, generator=gen, device=DEVICE) < 0.3
        dead[0, 0] = True  # an all -inf row
        lse[dead] = float("-inf")
        out[dead] = float("nan")
        m, ml = merge_attention_states(out, lse)
        rm, rml = ref.merge_attention_states(out, lse)
        bm, bml = ref.merge_attention_states(out, lse, compute_dtype=torch.float32)
        name = str(dtype).removeprefix("torch.")
        comps = [
            compare(
                f"merge/{name}/out[{idx}]",
                "out",
                m,
                rm,
                bm.to(dtype),
                lookup("merge", name, "out"),
                dtype,
            ),
            compare(
                f"merge/{name}/lse[{idx}]",
                "lse",
                ml,
                rml,
                bml,
                lookup("merge", name, "lse"),
                torch.float32,
            ),
        ]
        for c in comps:
            worst[f"merge/{c.quantity}"] = max(worst.get(f"merge/{c.quantity}", 0.0), c.ratio)
            if not c.passed:
                failures += 1
                log.line(str(c))
    return failures


def big_offset_case(log: Log, gen: torch.Generator) -> int:
    """Blocks whose element offset passes 2^31 (fp8 cache of > 2^31 elements)."""
    block_size, hk, head_dim = 16, 8, 128
    per_block = block_size * hk * head_dim
    num_blocks = (2**31) // per_block + 64
    k = torch.zeros(num_blocks, block_size, hk, head_dim, dtype=torch.float8_e4m3fn, device=DEVICE)
    v = torch.zeros_like(k)
    ids = torch.arange(num_blocks - 40, num_blocks, device=DEVICE, dtype=torch.int32)
    k[ids.long()] = torch.randn(40, block_size, hk, head_dim, generator=gen, device=DEVICE).to(
        k.dtype
    )
    v[ids.long()] = torch.randn(40, block_size, hk, head_dim, generator=gen, device=DEVICE).to(
        k.dtype
    )
    tables = ids.flip(0).reshape(1, 40)
    lens = torch.tensor([40 * block_size - 5], dtype=torch.int32, device=DEVICE)
    q = torch.randn(1, 32, 1, head_dim, generator=gen, device=DEVICE).to(torch.bfloat16)
    out, lse = paged_attention(q, k, v, tables, lens, return_lse=True)
    small_k = k[ids.long()].clone()
    small_v = v[ids.long()].clone()
    small_t = torch.arange(40, device=DEVICE, dtype=torch.int32).flip(0).reshape(1, 40)
    ref_out, ref_lse = ref.paged_attention(q, small_k, small_v, small_t, lens, return_lse=True)
    base_out, base_lse = ref.paged_attention(
        q, small_k, small_v, small_t, lens, return_lse=True, compute_dtype=torch.bfloat16
    )
    comps = judge(
        "int64 offsets", torch.float8_e4m3fn, out, lse, ref_out, ref_lse, base_out, base_lse
    )
    del k, v
    torch.cuda.empty_cache()
    bad = [c for c in comps if not c.passed]
    for c in bad:
        log.line(str(c))
    log.line(
        f"int64 offsets ({num_blocks} blocks, {num_blocks * per_block / 2**31:.2f} x 2^31 elements): "
        + ("ok" if not bad else "FAIL")
    )
    return len(bad)


# ---------------------------------------------------------------- timing


def bench(fn, *, graph: bool = False) -> float:
    """Median microseconds of fn() (do_bench flushes L2; the graph variant replays a capture)."""
    if DRY:
        fn()
        return 1.0
    if graph:
        return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def size(b: int, ctx: int) -> tuple[int, int]:
    """(B, context) of a timed shape; tiny in a dry run."""
    return (min(b, 2), max(ctx // 1024, 40)) if DRY else (b, ctx)


def kv_bytes(b: int, ctx: int, dtype: torch.dtype, lq: int = 1) -> float:
    """K and V bytes read plus q and out (bf16)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return 2.0 * b * ctx * HK * D * elem + 2.0 * b * HQ * lq * D * 2


def bench_inputs(b: int, ctx: int, block_size: int, dtype: torch.dtype, lq: int = 1):
    """Shuffled pool of exactly the used blocks (+8), every request ctx tokens long."""
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    pages = -(-ctx // block_size)
    num_blocks = b * pages + 8
    shape = (num_blocks, block_size, HK, D)
    q_dtype = torch.float16 if DRY else torch.bfloat16  # the interpreter's bf16 dot is wrong
    dtype = q_dtype if dtype == torch.bfloat16 else dtype
    k = torch.randn(shape, generator=gen, device=DEVICE).to(q_dtype).to(dtype)
    v = torch.randn(shape, generator=gen, device=DEVICE).to(q_dtype).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen, device=DEVICE)
    tables = perm[: b * pages].to(torch.int32).reshape(b, pages)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEVICE)
    q = torch.randn(b, HQ, lq, D, generator=gen, device=DEVICE).to(q_dtype)
    kd = vd = None
    if dtype in FP8:
        kd = torch.tensor(0.5, device=DEVICE)
        vd = torch.tensor(0.5, device=DEVICE)
    return q, k, v, tables, lens, kd, vd


def time_paged(inputs, *, num_splits=None, config=None, graph=False) -> tuple[float, int]:
    """Launcher path: plan (validation, a host sync) once, then time the launches only."""
    q, k, v, tables, lens, kd, vd = inputs
    plan = plan_paged(
        q, k, v, tables, lens, k_descale=kd, v_descale=vd, num_splits=num_splits, config=config
    )

    def fn():
        return launch_paged(
            q,
            k,
            v,
            tables,
            lens,
            kd,
            vd,
            scale=plan.scale,
            num_splits=plan.num_splits,
            kv_layout="NHD",
            config=plan.config,
        )

    fn()
    return bench(fn, graph=graph), plan.num_splits


def time_public(inputs) -> float:
    """Public path: validation (reads seq_lens / block_tables on the host) on every call."""
    q, k, v, tables, lens, kd, vd = inputs
    return bench(lambda: paged_attention(q, k, v, tables, lens, k_descale=kd, v_descale=vd))


def copy_bandwidth() -> float:
    """Bytes per second (read + write) of a 2 GiB device-to-device copy."""
    n = 2**20 if DRY else 2 * 2**30
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src))
    return 2 * n / (us * 1e-6)


def sdpa_times(b: int, ctx: int) -> dict[str, float]:
    """SDPA cuDNN / flash decode on contiguous (B, Hk, ctx, D) KV: enable_gqa, and GQA folded
    into query rows (q as (B, Hk, G, D), exact for Lq = 1). Errors are recorded, not raised."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    gen = torch.Generator(device=DEVICE).manual_seed(2)
    q = torch.randn(b, HQ, 1, D, generator=gen, device=DEVICE).to(torch.bfloat16)
    k = torch.randn(b, HK, ctx, D, generator=gen, device=DEVICE).to(torch.bfloat16)
    v = torch.randn(b, HK, ctx, D, generator=gen, device=DEVICE).to(torch.bfloat16)
    qf = q.reshape(b, HK, HQ // HK, D)
    calls = {
        "gqa": lambda: sdpa(q, k, v, enable_gqa=True),
        "fold": lambda: sdpa(qf, k, v),
    }
    res: dict[str, float] = {}
    for name, backend in (
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
    ):
        for how, fn in calls.items():
            try:
                with sdpa_kernel(backend):
                    res[f"{name}-{how}"] = bench(fn)
            except Exception as exc:
                res[f"{name}-{how}-error"] = repr(exc)[:160]
    return res


class Table:
    """Timing rows, logged as they come."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def add(self, name: str, us: float, nbytes: float, **extra: object) -> None:
        tbs = nbytes / (us * 1e-6) / 1e12
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        self.log.line(f"{name:52s} {us:9.1f} us {tbs:6.2f} TB/s {more}")
        self.log.record(kind="time", name=name, us=us, tbs=tbs, **extra)


def section(log: Log, name: str, fn, *args) -> None:
    """Run one timing section; an error is logged and the next section still runs."""
    if time.time() > DEADLINE:
        log.line(f"{name}: skipped (time budget)")
        return
    t0 = time.time()
    try:
        fn(*args)
    except Exception:
        log.line(f"{name}: ERROR\n{traceback.format_exc()[-1500:]}")
    log.line(f"[{name}: {time.time() - t0:.0f} s]")
    torch.cuda.empty_cache() if not DRY else None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- warm-up (parallel compiles)


def warm_job(job: tuple[str, int, str | None, tuple[int, ...]]) -> str:
    """Worker process: launch one (cache dtype, block size, config) at each split count, so
    Triton compiles and stores the specialisation the timed launch will use (same dtypes,
    strides divisible by 16, split partials in float32 for splits > 1)."""
    name, block_size, cfg_name, splits = job
    dtype = getattr(torch, name)
    t0 = time.time()
    inp = bench_inputs(2, 2048, block_size, dtype)
    for ns in splits:
        time_paged(inp, num_splits=ns, config=named_config(cfg_name) if cfg_name else None)
    torch.cuda.synchronize()
    return (
        f"{name} bs={block_size} {cfg_name or 'default'} splits={splits}: {time.time() - t0:.0f} s"
    )


def warm_merge() -> str:
    """Worker process: the merge kernel for every split-count tile (BLOCK_S 2..256)."""
    t0 = time.time()
    for s in (2, 4, 8, 16, 64, 128, 256):
        part = torch.zeros(HQ, s, D, device=DEVICE)
        merged = torch.empty(HQ, D, device=DEVICE, dtype=torch.bfloat16)
        launch_merge(
            part, torch.zeros(HQ, s, device=DEVICE), merged, torch.empty(HQ, device=DEVICE)
        )
    torch.cuda.synchronize()
    return f"merge: {time.time() - t0:.0f} s"


def warm(log: Log, sections: set[str], workers: int) -> None:
    """Compile the specialisations of the sweep and targets sections in `workers` processes."""
    jobs: list = []
    if "sweep" in sections:
        for name, names in SWEEP.items():
            for block_size in (16, 64):
                jobs += [(name, block_size, n, (2,)) for n in names]
    if "targets" in sections or "graph" in sections:
        for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            for block_size in (16, 64):
                jobs.append((name, block_size, None, (1, 2)))
    jobs = list(dict.fromkeys(jobs))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(warm_merge)] + [pool.submit(warm_job, j) for j in jobs]
        for f in futures:
            try:
                log.line("warm " + f.result())
            except Exception as exc:
                log.line(f"warm: ERROR {type(exc).__name__}: {str(exc)[-300:]}")


# ---------------------------------------------------------------- issue 8's targets


def t_decode_b32(t: Table, block_size: int) -> None:
    """bf16 B=32 ctx 8192 (default, public) vs SDPA; Lq = 4 vs Lq = 1."""
    b, ctx = size(32, 8192)
    nb = kv_bytes(b, ctx, torch.bfloat16)
    if block_size == 16:
        for key, val in sdpa_times(b, ctx).items():
            if key.endswith("error"):
                t.log.line(f"sdpa {key}: {val}")
            else:
                t.add(f"sdpa {key} B={b} ctx={ctx} contiguous", val, nb)
    tag = f"B={b} ctx={ctx} bs={block_size}"
    inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
    us, n = time_paged(inp)
    t.add(f"paged bf16 {tag} default", us, nb, splits=n)
    up = time_public(inp)
    t.add(f"paged bf16 {tag} public (validation each call)", up, nb, vs_launcher=round(up / us, 2))
    del inp
    inp = bench_inputs(b, ctx, block_size, torch.bfloat16, lq=4)
    nb4 = kv_bytes(b, ctx, torch.bfloat16, 4)
    us4, n4 = time_paged(inp)
    t.add(f"paged bf16 {tag} Lq=4 default", us4, nb4, splits=n4, vs_lq1=round(us4 / us, 3))


def t_long(t: Table, block_size: int, bw: float) -> None:
    b, ctx = size(1, 131072)
    nb = kv_bytes(b, ctx, torch.bfloat16)
    tag = f"B={b} ctx={ctx} bs={block_size}"
    inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
    us, n = time_paged(inp)
    us1, _ = time_paged(inp, num_splits=1)
    t.add(
        f"paged bf16 {tag} default",
        us,
        nb,
        splits=n,
        pct_of_copy=round(100 * nb / (us * 1e-6) / bw, 1),
        speedup_vs_1split=round(us1 / us, 2),
    )
    t.add(f"paged bf16 {tag} num_splits=1", us1, nb)


def t_fp8(t: Table, block_size: int) -> None:
    """Default path: fp8 caches against the bf16 cache, B = 1 and 32, ctx 32768."""
    for b0 in (1, 32):
        b, ctx = size(b0, 32768)
        tag = f"B={b} ctx={ctx} bs={block_size}"
        inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
        ub, n = time_paged(inp)
        t.add(f"paged bf16 {tag} default", ub, kv_bytes(b, ctx, torch.bfloat16), splits=n)
        del inp
        for dt in FP8:
            inp = bench_inputs(b, ctx, block_size, dt)
            uf, n = time_paged(inp)
            t.add(
                f"paged {dtype_name(dt)} {tag} default",
                uf,
                kv_bytes(b, ctx, dt),
                splits=n,
                speedup_vs_bf16=round(ub / uf, 2),
            )
            del inp


def t_short(t: Table, block_size: int) -> None:
    b, ctx = size(1, 1024)
    nb = kv_bytes(b, ctx, torch.bfloat16)
    tag = f"B={b} ctx={ctx} bs={block_size}"
    inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
    us, n = time_paged(inp, graph=True)
    t.add(f"paged bf16 {tag} default, CUDA graph", us, nb, splits=n)
    us, n = time_paged(inp)
    t.add(f"paged bf16 {tag} default, stream launches", us, nb, splits=n)
    t.add(f"paged bf16 {tag} public, stream", time_public(inp), nb)
    for ns in (1, 8):
        us, n = time_paged(inp, num_splits=ns, graph=True)
        t.add(f"paged bf16 {tag} CUDA graph", us, nb, splits=n)


def t_merge(t: Table, block_size: int) -> None:
    b, ctx = size(1, 65536)
    tag = f"B={b} ctx={ctx} bs={block_size}"
    inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
    usg, n = time_paged(inp, graph=True)
    part = torch.randn(b * HQ, n, D, device=DEVICE)
    part_lse = torch.randn(b * HQ, n, device=DEVICE)
    merged = torch.empty(b * HQ, D, device=DEVICE, dtype=inp[0].dtype)
    merged_lse = torch.empty(b * HQ, device=DEVICE)
    umg = bench(lambda: launch_merge(part, part_lse, merged, merged_lse), graph=True)
    t.log.line(
        f"merge alone ({tag}, Hq={HQ}, splits={n}), CUDA graph: {umg:.2f} us = "
        f"{100 * umg / usg:.1f}% of the graphed call ({usg:.1f} us)"
    )
    t.log.record(kind="merge-graph", us=umg, pct=100 * umg / usg, splits=n, block_size=block_size)


def targets(log: Log) -> None:
    t = Table(log)
    bw = copy_bandwidth()
    log.line(f"copy bandwidth (D2D, read + write): {bw / 1e12:.3f} TB/s")
    log.record(kind="copy", tbs=bw / 1e12)
    for block_size in (16, 64):
        section(log, f"fp8 bs={block_size}", t_fp8, t, block_size)
        section(log, f"decode B=32 bs={block_size}", t_decode_b32, t, block_size)
        section(log, f"short bs={block_size}", t_short, t, block_size)
        section(log, f"long B=1 bs={block_size}", t_long, t, block_size, bw)
        section(log, f"merge bs={block_size}", t_merge, t, block_size)


# ---------------------------------------------------------------- launch-setting sweep


def config_ok(log: Log, dtype: torch.dtype, block_size: int, cfg: PagedConfig, label: str) -> bool:
    """The setting against the oracle on a poisoned pool (the timed specialisation)."""
    gen = torch.Generator(device=DEVICE).manual_seed(block_size)
    lens = [1000, 37, 0, 3 * block_size] if not DRY else [40, 3]
    if DRY and dtype == torch.bfloat16:  # the interpreter's bf16 dot is wrong
        dtype = torch.float16
    k, v, tables, seq_lens = make_cache(
        gen, lens, block_size=block_size, hk=HK, head_dim=D, dtype=dtype, layout="NHD"
    )
    q_dtype = torch.float16 if DRY else torch.bfloat16
    q = torch.randn(len(lens), HQ, 1, D, generator=gen, device=DEVICE).to(q_dtype)
    kd = vd = torch.tensor(0.5, device=DEVICE) if dtype in FP8 else None
    kwargs = dict(k_descale=kd, v_descale=vd)
    plan = plan_paged(q, k, v, tables, seq_lens, num_splits=3, config=cfg, **kwargs)
    out, lse = launch_paged(
        q,
        k,
        v,
        tables,
        seq_lens,
        kd,
        vd,
        scale=plan.scale,
        num_splits=3,
        kv_layout="NHD",
        config=cfg,
    )
    ref_out, ref_lse = ref.paged_attention(q, k, v, tables, seq_lens, return_lse=True, **kwargs)
    base_out, base_lse = ref.paged_attention(
        q, k, v, tables, seq_lens, return_lse=True, compute_dtype=q_dtype, **kwargs
    )
    comps = judge(label, dtype, out, lse, ref_out, ref_lse, base_out, base_lse)
    for c in comps:
        if not c.passed:
            log.line(str(c))
    return all(c.passed for c in comps)


def sweep_one(t: Table, name: str, block_size: int) -> None:
    """Every SWEEP setting of one cache dtype: B = 1 and 32 at ctx 32768 and B = 1 at ctx
    131072 (where a call's fixed cost, ~22 us in run 4, weighs less), default splits and twice
    as many; speed-up against the bf16 default at the same shape."""
    dtype = getattr(torch, name)
    shapes = [size(1, 32768), size(32, 32768), size(1, 131072)]
    bf16_us = {}
    for b, ctx in shapes:
        inp = bench_inputs(b, ctx, block_size, torch.bfloat16)
        bf16_us[b, ctx] = time_paged(inp)[0]
        del inp
    for cfg_name in SWEEP[name]:
        cfg = named_config(cfg_name)
        label = f"sweep {name} bs={block_size} {cfg_name}"
        if time.time() > DEADLINE:
            return
        try:
            if not config_ok(t.log, dtype, block_size, cfg, label):
                t.log.line(f"{label}: WRONG RESULT, not timed")
                continue
            for b, ctx in shapes:
                inp = bench_inputs(b, ctx, block_size, dtype)
                us, n = time_paged(inp, config=cfg)
                for ns in (n, min(2 * n, 256)):
                    u = us if ns == n else time_paged(inp, num_splits=ns, config=cfg)[0]
                    t.add(
                        f"{label} B={b} ctx={ctx}",
                        u,
                        kv_bytes(b, ctx, dtype),
                        splits=ns,
                        speedup_vs_bf16_default=round(bf16_us[b, ctx] / u, 3),
                    )
                del inp
        except Exception as exc:
            t.log.line(f"{label}: {type(exc).__name__} {str(exc)[:200]}")


def sweep(log: Log) -> None:
    t = Table(log)
    for name in SWEEP:
        for block_size in (16, 64):
            section(log, f"sweep {name} bs={block_size}", sweep_one, t, name, block_size)


# ---------------------------------------------------------------- CUDA graph replay


def graph_one(log: Log, b0: int, ctx0: int, block_size: int, dtype: torch.dtype) -> bool:
    """Capture `launch_paged` (planned once), replay: bitwise equal to eager, also after new
    lengths and queries are copied into the captured tensors. Logs the replay time."""
    b, ctx = size(b0, ctx0)
    q, k, v, tables, lens, kd, vd = bench_inputs(b, ctx, block_size, dtype)
    plan = plan_paged(q, k, v, tables, lens, k_descale=kd, v_descale=vd)

    def call():
        return launch_paged(
            q,
            k,
            v,
            tables,
            lens,
            kd,
            vd,
            scale=plan.scale,
            num_splits=plan.num_splits,
            kv_layout="NHD",
            config=plan.config,
        )

    eager = call()  # compiles outside the capture
    if DRY:
        return True
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    ok = True
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    for step in range(2):
        graph.replay()
        torch.cuda.synchronize()
        same = all(torch.equal(a, e) for a, e in zip(captured, eager, strict=True))
        log.line(
            f"graph B={b} ctx={ctx} bs={block_size} {dtype_name(dtype)} replay {step}: "
            f"{'bitwise equal to eager' if same else 'DIFFERS from eager'}"
        )
        ok = ok and same
        # new values in the captured inputs: shorter contexts, other queries
        lens.copy_(torch.randint(0, ctx + 1, lens.shape, generator=gen, device=DEVICE).int())
        q.copy_(torch.randn(q.shape, generator=gen, device=DEVICE).to(q.dtype))
        eager = call()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(200):
        graph.replay()
    stop.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(stop) * 1e3 / 200
    log.line(
        f"graph B={b} ctx={ctx} bs={block_size} {dtype_name(dtype)}: {us:.1f} us per replay "
        f"(back to back, L2 warm), splits={plan.num_splits}"
    )
    log.record(
        kind="graph",
        b=b,
        ctx=ctx,
        block_size=block_size,
        dtype=dtype_name(dtype),
        ok=ok,
        us=us,
        splits=plan.num_splits,
    )
    return ok


def graphs(log: Log) -> int:
    failures = 0
    for b, ctx, dtype in ((1, 1024, torch.bfloat16), (32, 8192, torch.float8_e4m3fn)):
        try:
            failures += not graph_one(log, b, ctx, 16, dtype)
        except Exception:
            failures += 1
            log.line(f"graph B={b}: ERROR\n{traceback.format_exc()[-1500:]}")
    return failures


SECTIONS = ("warm", "correctness", "sweep", "targets", "graph")


def main() -> int:
    global DEVICE, DRY, DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=12, help="warm-up compile processes")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop timing after this")
    parser.add_argument("--correctness-s", type=float, default=140.0, help="stop drawing cases")
    parser.add_argument("--device", default="cuda", help="cpu: dry run of the script logic")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(sections - set(SECTIONS))}; valid: {SECTIONS}")
    DEADLINE = time.time() + args.budget_s
    DEVICE = args.device
    DRY = DEVICE == "cpu"
    log = Log(args.out)
    if DRY:
        log.line("dry run on the CPU interpreter: tiny shapes, timings are placeholders")
    else:
        props = torch.cuda.get_device_properties(0)
        log.line(
            f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
            f"triton {triton.__version__}"
        )
    failures = 0
    t0 = time.time()
    if "warm" in sections and not DRY:
        warm(log, sections, args.workers)
        log.line(f"[warm: {time.time() - t0:.0f} s]")
    if "graph" in sections:
        failures += graphs(log)
    if "sweep" in sections:
        sweep(log)
    if "targets" in sections:
        targets(log)
    if "correctness" in sections:
        t0 = time.time()
        failures += correctness(log, args.cases, args.seed, not DRY, args.correctness_s)
        log.line(f"[correctness: {time.time() - t0:.0f} s]")
    log.line(f"done: {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
