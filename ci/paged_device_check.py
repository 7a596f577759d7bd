"""Device check of the paged-KV kernels: correctness vs the float64 oracle, then timings.

Run on a CUDA device from the repository root:

    PYTHONPATH=. python3 ci/paged_device_check.py --out "$OUT" [--sweep]

1. Correctness: randomized cases (bf16 / fp16 / fp8 e4m3 / e5m2 caches, block sizes 8..256,
   split counts 1..64, Lq 1..16, NHD / HND, D including non-powers of two, NaN in every unused
   cache slot, -1 and out-of-range ids in unused block-table entries, zero-length requests),
   judged by `attnverify.verify.compare` with the `paged` / `merge` tolerance rules; one case
   with block offsets past 2^31 elements.
2. Timing (triton.testing.do_bench, median; L2 flushed between calls): Hq=32, Hk=8, D=128,
   block 16 and 64, against SDPA cuDNN / flash on the same KV stored contiguously and a large
   device-to-device copy, all in this process. The paged kernel is timed on the launcher path
   (`plan_paged` once: validation reads seq_lens / block_tables on the host, a sync) and on
   the public path (validation on every call).

Writes `paged_device.jsonl` (one JSON object per result) and `paged_device.log` under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

from attnverify.kernels.paged import (
    PagedConfig,
    launch_merge,
    launch_paged,
    merge_attention_states,
    paged_attention,
    plan_paged,
)
from attnverify.reference import paged as ref
from attnverify.verify.compare import compare
from attnverify.verify.tolerance import lookup

HQ, HK, D = 32, 8, 128
DEVICE = "cuda"  # --device cpu runs the correctness part under TRITON_INTERPRET=1 (dry run)
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
    comps = []
    arch = "gpu"
    name = str(dtype).removeprefix("torch.")
    rule_o = lookup("paged", name, "out", arch)
    rule_l = lookup("paged", name, "lse", arch)
    comps.append(
        compare(f"paged/{name}/out[{case}]", "out", out, ref_out, base_out, rule_o, out.dtype)
    )
    comps.append(
        compare(
            f"paged/{name}/lse[{case}]",
            "lse",
            lse,
            ref_lse,
            base_lse,
            rule_l,
            torch.float32,
            exact_zeros=False,
        )
    )
    return comps


def correctness(log: Log, num_cases: int, seed: int, big: bool = True) -> int:
    rng = random.Random(seed)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    failures = 0
    worst: dict[str, float] = {}
    dtypes = [torch.bfloat16, torch.float16, *FP8, torch.bfloat16]
    for idx in range(num_cases):
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
    log.line(f"correctness: {num_cases} paged cases + merge + int64 case, {failures} failures")
    log.line("worst ratios (impl err / baseline err): " + json.dumps(worst))
    log.record(kind="correctness", cases=num_cases, failures=failures, worst=worst)
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
                exact_zeros=False,
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


def kv_bytes(b: int, ctx: int, dtype: torch.dtype, lq: int = 1) -> float:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2.0 * b * ctx * HK * D * elem + 2.0 * b * HQ * lq * D * 2


def bench_inputs(
    b: int, ctx: int, block_size: int, dtype: torch.dtype, lq: int = 1, layout: str = "NHD"
):
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    pages = -(-ctx // block_size)
    num_blocks = b * pages + 8
    shape = (num_blocks, block_size, HK, D) if layout == "NHD" else (num_blocks, HK, block_size, D)
    k = torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.bfloat16).to(dtype)
    v = torch.randn(shape, generator=gen, device=DEVICE, dtype=torch.bfloat16).to(dtype)
    tables = (
        torch.randperm(num_blocks, generator=gen, device=DEVICE)[: b * pages]
        .int()
        .reshape(b, pages)
    )
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEVICE)
    q = torch.randn(b, HQ, lq, D, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    kd = vd = None
    if dtype in FP8:
        kd = torch.tensor(0.5, device=DEVICE)
        vd = torch.tensor(0.5, device=DEVICE)
    return q, k, v, tables, lens, kd, vd


def time_paged(
    inputs, *, num_splits=None, config=None, layout="NHD", graph=False
) -> tuple[float, int]:
    q, k, v, tables, lens, kd, vd = inputs
    plan = plan_paged(
        q,
        k,
        v,
        tables,
        lens,
        k_descale=kd,
        v_descale=vd,
        num_splits=num_splits,
        kv_layout=layout,
        config=config,
    )
    fn = lambda: launch_paged(
        q,
        k,
        v,
        tables,
        lens,
        kd,
        vd,
        scale=plan.scale,
        num_splits=plan.num_splits,
        kv_layout=layout,
        config=plan.config,
    )
    fn()
    if graph:
        return do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3, plan.num_splits
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3, plan.num_splits


def time_public(inputs, *, num_splits=None) -> float:
    q, k, v, tables, lens, kd, vd = inputs
    fn = lambda: paged_attention(
        q, k, v, tables, lens, k_descale=kd, v_descale=vd, num_splits=num_splits
    )
    return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    del src, dst
    return 2 * 2 * 2**30 / (ms * 1e-3)


def sdpa_times(b: int, ctx: int, lq: int = 1) -> dict[str, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    gen = torch.Generator(device=DEVICE).manual_seed(2)
    q = torch.randn(b, HQ, lq, D, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(b, HK, ctx, D, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(b, HK, ctx, D, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    qf = q.reshape(b, HK, (HQ // HK) * lq, D)  # GQA folded into rows (valid for Lq = 1)
    res = {}
    for name, backend in (
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
    ):
        for how, fn in (
            ("gqa", lambda: sdpa(q, k, v, enable_gqa=True)),
            ("fold", lambda: sdpa(qf, k, v)),
        ):
            try:
                with sdpa_kernel(backend):
                    fn()
                    torch.cuda.synchronize()
                    res[f"{name}-{how}"] = (
                        do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
                    )
            except Exception as exc:
                res[f"{name}-{how}"] = float("nan")
                res[f"{name}-{how}-error"] = repr(exc)[:200]
    return res


def sweep(log: Log) -> None:
    """Launch settings and split counts at the target shapes (bf16)."""
    configs = [PagedConfig(bn, w, s) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]
    for block_size in (16, 64):
        for b, ctx, splits in ((32, 8192, [None, 1, 2, 4]), (1, 131072, [None])):
            inputs = bench_inputs(b, ctx, block_size, torch.bfloat16)
            for cfg in configs:
                for ns in splits:
                    try:
                        us, n = time_paged(inputs, num_splits=ns, config=cfg)
                    except Exception as exc:
                        log.line(
                            f"sweep bs={block_size} B={b} ctx={ctx} {cfg} splits={ns}: {exc!r}"[
                                :300
                            ]
                        )
                        continue
                    tbs = kv_bytes(b, ctx, torch.bfloat16) / (us * 1e-6) / 1e12
                    log.line(
                        f"sweep bs={block_size} B={b} ctx={ctx} bn={cfg.block_n} w={cfg.num_warps} "
                        f"st={cfg.num_stages} splits={n}: {us:.1f} us {tbs:.2f} TB/s"
                    )
                    log.record(
                        kind="sweep",
                        block_size=block_size,
                        B=b,
                        ctx=ctx,
                        config=cfg.__dict__,
                        splits=n,
                        us=us,
                        tbs=tbs,
                    )
            del inputs
            torch.cuda.empty_cache()


def timings(log: Log) -> None:
    bw = copy_bandwidth()
    log.line(f"copy bandwidth (2 GiB D2D, read+write): {bw / 1e12:.3f} TB/s")
    log.record(kind="copy", tbs=bw / 1e12)
    rows = []

    def add(name: str, us: float, nbytes: float, **extra) -> None:
        tbs = nbytes / (us * 1e-6) / 1e12
        rows.append((name, us, tbs))
        log.line(
            f"{name:55s} {us:10.1f} us {tbs:6.2f} TB/s "
            + " ".join(f"{k}={v}" for k, v in extra.items())
        )
        log.record(kind="time", name=name, us=us, tbs=tbs, **extra)

    sd = sdpa_times(32, 8192)
    for key, val in sd.items():
        if key.endswith("error"):
            log.line(f"sdpa {key}: {val}")
        else:
            add(f"sdpa {key} B=32 ctx=8192 (contiguous)", val, kv_bytes(32, 8192, torch.bfloat16))
    for block_size in (16, 64):
        tag = f"bs={block_size}"
        inp = bench_inputs(32, 8192, block_size, torch.bfloat16)
        us, n = time_paged(inp)
        add(
            f"paged bf16 B=32 ctx=8192 {tag} launcher",
            us,
            kv_bytes(32, 8192, torch.bfloat16),
            splits=n,
        )
        add(
            f"paged bf16 B=32 ctx=8192 {tag} public",
            time_public(inp),
            kv_bytes(32, 8192, torch.bfloat16),
        )
        del inp
        inp = bench_inputs(32, 8192, block_size, torch.bfloat16, lq=4)
        us4, n = time_paged(inp)
        add(
            f"paged bf16 B=32 ctx=8192 Lq=4 {tag} launcher",
            us4,
            kv_bytes(32, 8192, torch.bfloat16, 4),
            splits=n,
            ratio_vs_lq1=round(us4 / us, 3),
        )
        del inp
        inp = bench_inputs(1, 131072, block_size, torch.bfloat16)
        us, n = time_paged(inp)
        us1, _ = time_paged(inp, num_splits=1)
        nb = kv_bytes(1, 131072, torch.bfloat16)
        add(
            f"paged bf16 B=1 ctx=131072 {tag} launcher",
            us,
            nb,
            splits=n,
            pct_copy=round(100 * nb / (us * 1e-6) / bw, 1),
            speedup_vs_1split=round(us1 / us, 2),
        )
        add(f"paged bf16 B=1 ctx=131072 {tag} num_splits=1", us1, nb)
        del inp
        for b, ctx in ((1, 32768), (32, 32768)):
            inb = bench_inputs(b, ctx, block_size, torch.bfloat16)
            ub, _ = time_paged(inb)
            del inb
            for dt in FP8:
                inf = bench_inputs(b, ctx, block_size, dt)
                uf, n = time_paged(inf)
                add(
                    f"paged {str(dt)[6:]} B={b} ctx={ctx} {tag} launcher",
                    uf,
                    kv_bytes(b, ctx, dt),
                    splits=n,
                    speedup_vs_bf16=round(ub / uf, 2),
                )
                del inf
            add(f"paged bf16 B={b} ctx={ctx} {tag} launcher", ub, kv_bytes(b, ctx, torch.bfloat16))
            torch.cuda.empty_cache()
        inp = bench_inputs(1, 1024, block_size, torch.bfloat16)
        usg, n = time_paged(inp, graph=True)
        add(
            f"paged bf16 B=1 ctx=1024 {tag} CUDA graph",
            usg,
            kv_bytes(1, 1024, torch.bfloat16),
            splits=n,
        )
        us, n = time_paged(inp)
        add(
            f"paged bf16 B=1 ctx=1024 {tag} launcher (stream)",
            us,
            kv_bytes(1, 1024, torch.bfloat16),
            splits=n,
        )
        add(
            f"paged bf16 B=1 ctx=1024 {tag} public",
            time_public(inp),
            kv_bytes(1, 1024, torch.bfloat16),
        )
        del inp
        inp = bench_inputs(1, 65536, block_size, torch.bfloat16)
        us, n = time_paged(inp)
        part = torch.randn(1 * HQ, n, D, device=DEVICE)
        part_lse = torch.randn(1 * HQ, n, device=DEVICE)
        merged = torch.empty(HQ, D, device=DEVICE, dtype=torch.bfloat16)
        merged_lse = torch.empty(HQ, device=DEVICE)
        um = (
            do_bench(
                lambda: launch_merge(part, part_lse, merged, merged_lse),
                warmup=25,
                rep=100,
                return_mode="median",
            )
            * 1e3
        )
        add(
            f"paged bf16 B=1 ctx=65536 {tag} launcher",
            us,
            kv_bytes(1, 65536, torch.bfloat16),
            splits=n,
        )
        log.line(
            f"merge alone (B=1 Hq=32 splits={n}): {um:.2f} us = {100 * um / us:.1f}% of the call"
        )
        log.record(kind="merge", us=um, pct=100 * um / us, splits=n, block_size=block_size)
        del inp
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep", action="store_true", help="sweep launch settings after the timings"
    )
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: correctness dry run only")
    args = parser.parse_args()
    log = Log(args.out)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":
        return 1 if correctness(log, args.cases, args.seed, big=False) else 0
    props = torch.cuda.get_device_properties(0)
    log.line(
        f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
        f"triton {triton.__version__}"
    )
    t0 = time.time()
    failures = 0 if args.skip_correctness else correctness(log, args.cases, args.seed)
    log.line(f"correctness took {time.time() - t0:.0f} s")
    t0 = time.time()
    timings(log)
    log.line(f"timings took {time.time() - t0:.0f} s")
    if args.sweep:
        t0 = time.time()
        sweep(log)
        log.line(f"sweep took {time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
