"""`attnverify bench`: time our kernels and the torch baselines at real model shapes.

For each variant the shapes come from its spec (`VariantSpec.bench_cases()`: vision-encoder
varlen, decoder GQA, decode batch x context grids). Every shape is verified once (one `check`
case, forward quantities) before anything is timed: a shape whose verification fails gets no
number. Then `triton.testing.do_bench` (median of repeated runs, same process) times our kernel
and every baseline this torch and device offer (`attnverify.verify.baselines`; for paged, SDPA
on the same KV gathered contiguously, where SDPA computes the same thing). For paged, a second
row `attnverify-planned` times the kernel as engines call it: validated and planned once
(`plan_paged`), then only `launch_paged`; the public function reads block tables on the host on
every call; `attnverify-graph` replays that launch from a CUDA graph (as engines run decode
steps; it must match the eager launch bitwise). For varlen, a second row `attnverify-host-cu`
passes cu_seqlens on the CPU: the call reads them without a device sync (the public row's
cu_seqlens are on the device); it runs the same kernel, so the public row's verification covers
it; `attnverify-graph` replays that call from a CUDA graph. Where every sequence has the same
length, `attnverify-dense` runs our gqa kernel on the same tokens as a dense batch (what the
varlen bookkeeping costs: varlen time over this one), and `attnverify-dense-graph` replays it
from a graph. For gqa, `attnverify-graph` replays the public call. The graph rows time the
GPU alone: where one call's host work (validation, Triton's launch) outlasts its kernels, as
at 8k-16k tokens of 1024-token images or under a 90%-sparse gqa mask, the stream-launched
rows time the host instead, and a ratio of two such rows compares two Python paths.

Backward rows (shape label ending "bwd"): where the spec's `bench_backward` says so (gqa: bf16
non-causal unmasked shapes, with and without a bias; varlen: D = 128), ours' gradients are
verified at the shape with every length cut to BACKWARD_VERIFY_LENGTH (`shortened`: the same
kernels and flags), then the backward alone is timed (`baselines.backward_call_of`) for ours
and `baselines.backward_baselines`, at BACKWARD_WORK x the forward's FLOPs.

Units: TFLOP/s (`spec.flops(case)`: 4 * visible pairs * Hq * D) for varlen, gqa, fp8, as % of
the matmul peak measured at the start of the run: bf16, and for every row of the fp8 variant
(its bf16 SDPA baseline too: the shape's work is fp8 attention) the e4m3 `torch._scaled_mm`
peak, none where the device has no fp8 GEMM (an fp8 kernel over the bf16 peak reads above
100%); GB/s (`spec.bytes_moved(case)`) for
paged and merge, as % of the measured device copy bandwidth. `speedup` is time(baseline) /
time(ours) at the same shape, measured in the same process.

Progress: a line per shape as it finishes (ours' figure or status, seconds since the variant
began), the variant's table at its end; `--json` rewrites its file after every variant.

CPU: timing needs a GPU; `run` says so and returns 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from attnverify import records
from attnverify.verify.baselines import (
    Impl,
    backward_baselines,
    backward_call_of,
    baselines,
    call_of,
    dense_of_varlen,
)
from attnverify.verify.report import format_table, utc_now

OURS = "attnverify"
BYTES_VARIANTS = ("paged", "merge")
PEAK_MATMUL_N = 8192
PEAK_COPY_BYTES = 2**30
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Backward FLOPs per forward FLOP, the convention the issues' backward targets count in (five
# matmuls to the forward's two), and the length the backward rows' gradients are verified at.
BACKWARD_WORK = 2.5
BACKWARD_VERIFY_LENGTH = 1024

Timer = Callable[[Callable[[], Any]], float]


def do_bench_timer(fn: Callable[[], Any]) -> float:
    """Median milliseconds of `fn` by `triton.testing.do_bench` (warm-up, cache flush, reps)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


@dataclass(frozen=True)
class Peaks:
    """Device ceilings measured at the start of a run.

    Attributes:
        matmul_tflops: bf16 (N x N) @ (N x N) matmul, TFLOP/s.
        copy_gbps: device-to-device copy, GB/s counting the read and the write.
        fp8_matmul_tflops: float8_e4m3fn (N x N) @ (N x N) by `torch._scaled_mm` (per-tensor
            scales, bf16 out), TFLOP/s; None where the device or torch has no fp8 GEMM.
    """

    matmul_tflops: float
    copy_gbps: float
    fp8_matmul_tflops: float | None = None


def measure_peaks(device: torch.device, timer: Timer = do_bench_timer) -> Peaks:
    """Measure the bf16 and fp8 matmul peaks and the copy bandwidth of `device`."""
    n = PEAK_MATMUL_N
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = timer(lambda: torch.matmul(a, b))
    matmul = 2.0 * n**3 / (ms * 1e-3) / 1e12
    fp8 = _fp8_matmul_tflops(a, b, timer)
    src = torch.empty(PEAK_COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    copy = 2.0 * PEAK_COPY_BYTES / (ms * 1e-3) / 1e9
    return Peaks(matmul_tflops=matmul, copy_gbps=copy, fp8_matmul_tflops=fp8)


def _fp8_matmul_tflops(a: torch.Tensor, b: torch.Tensor, timer: Timer) -> float | None:
    """TFLOP/s of a @ b (n x n) in float8_e4m3fn by `torch._scaled_mm` (b column-major, as it
    requires), or None where torch or the device has no fp8 GEMM."""
    n = a.shape[0]
    a8 = a.to(torch.float8_e4m3fn)
    b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.ones((), device=a.device)

    def mm() -> torch.Tensor:
        return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    try:
        mm()
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return 2.0 * n**3 / (timer(mm) * 1e-3) / 1e12


@dataclass
class BenchRow:
    """One implementation at one shape.

    Attributes:
        variant, shape (short label), length (x of the plot), impl: what was timed.
        ms: median time, None when not timed (status says why).
        value, unit: TFLOP/s or GB/s; pct_peak: value over the measured peak, in %.
        speedup: for a baseline row, time(baseline) / time(ours) (>1: ours is faster).
        status: "ok", "failed verification: ...", "unavailable: ...", "error: ...".
        case: the case's fields; meta: device, versions, git sha, time (JSON rows).
    """

    variant: str
    shape: str
    length: int
    impl: str
    ms: float | None
    value: float | None
    unit: str
    pct_peak: float | None
    speedup: float | None
    status: str
    case: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32",
                "float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2"}  # fmt: skip


def shape_label(case: Any) -> str:
    """A short shape label: "bf16 B1 H16/4 D128 L8192x8192 causal bias"; a paged fp8 cache
    adds "e4m3-cache", fp8 per-head descales "per-head"."""
    dtype = SHORT_DTYPES.get(case.dtype, case.dtype)
    heads = f"H{case.heads_q}/{case.heads_k} D{case.head_dim}"
    if case.variant == "varlen":
        lens = case.seqlens_k
        size = f"N{len(lens)} L{min(lens, default=0)}-{max(lens, default=0)}"
        return f"{dtype} {heads} {size}" + (" causal" if case.causal else "")
    if case.variant == "paged":
        ctx = max(case.seq_lens, default=0)
        label = f"{dtype} B{case.batch} {heads} Lq{case.lq} ctx{ctx} bs{case.block_size}"
        cache = case.cache_dtype
        return label + (f" {SHORT_DTYPES.get(cache, cache)}-cache" if cache else "")
    if case.variant == "merge":
        return f"{dtype} lead{list(case.lead_shape)} S{case.num_states} D{case.head_dim}"
    flags = (" causal" if case.causal else "") + (" bias" if case.bias_shape else "")
    flags += " mask" if case.mask_shape else ""
    flags += " per-head" if case.variant == "fp8" and case.descale == "head" else ""
    return f"{dtype} B{case.batch} {heads} L{case.lq}x{case.lk}{flags}"


def shape_length(case: Any) -> int:
    """The plot's x value: longest sequence (varlen), context (paged), Lk (gqa, fp8)."""
    if case.variant == "varlen":
        return max(case.seqlens_k, default=0)
    if case.variant == "paged":
        return max(case.seq_lens, default=0)
    if case.variant == "merge":
        return math.prod(case.lead_shape)
    return case.lk


def _time(impl: Impl, timer: Timer) -> tuple[float | None, str]:
    if impl.fn is None:
        return None, f"unavailable: {impl.reason}"
    try:
        # A backend that cannot run the shape warns before it raises; the status says it.
        with impl.context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            impl.fn()
            return timer(impl.fn), "ok"
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"error: {type(exc).__name__}: {first[:200]}"


def _peak_of(variant: str, peaks: Peaks) -> float | None:
    """The ceiling a variant's rows are a % of: copy bandwidth (paged, merge), the fp8 matmul
    peak (fp8; None when unmeasured), else the bf16 matmul peak."""
    if variant in BYTES_VARIANTS:
        return peaks.copy_gbps
    return peaks.fp8_matmul_tflops if variant == "fp8" else peaks.matmul_tflops


def _row(
    spec: Any,
    case: Any,
    impl: str,
    ms: float | None,
    status: str,
    peaks: Peaks | None,
    *,
    backward: bool = False,
) -> BenchRow:
    is_bytes = case.variant in BYTES_VARIANTS
    unit = "GB/s" if is_bytes else "TFLOP/s"
    value = pct = None
    if ms is not None and ms > 0:
        work = spec.bytes_moved(case) if is_bytes else spec.flops(case)
        work *= BACKWARD_WORK if backward else 1.0
        value = work / (ms * 1e-3) / (1e9 if is_bytes else 1e12)
        peak = None if peaks is None else _peak_of(case.variant, peaks)
        if peak is not None:
            pct = 100.0 * value / peak
    return BenchRow(
        case.variant,
        shape_label(case) + (" bwd" if backward else ""),
        shape_length(case),
        impl,
        ms,
        value,
        unit,
        pct,
        None,
        status,
        case.to_dict(),
    )


def bench_shape(
    spec: Any,
    case: Any,
    ours: Callable[..., Any] | None,
    *,
    device: torch.device,
    timer: Timer,
    peaks: Peaks | None,
    ours_name: str = OURS,
    ours_reason: str = "",
    replay_dir: Path | None = None,
) -> list[BenchRow]:
    """Verify `ours` at `case` (one forward case), then time it and every baseline.

    No number for ours when verification fails (status names the failing quantities and the
    replay file); baselines are still timed for reference. `ours=None`: ours is skipped with
    `ours_reason`.
    """
    from attnverify.kernels._gate import verifier_calls

    with verifier_calls():  # timing an unverified shape is the point: the gate lets it through
        return _bench_shape(
            spec, case, ours, device, timer, peaks, ours_name, ours_reason, replay_dir
        )


def _bench_shape(
    spec: Any,
    case: Any,
    ours: Callable[..., Any] | None,
    device: torch.device,
    timer: Timer,
    peaks: Peaks | None,
    ours_name: str,
    ours_reason: str,
    replay_dir: Path | None,
) -> list[BenchRow]:
    inputs = spec.make_inputs(case, device)
    rows = []
    ours_ms = None
    if ours is None:
        rows.append(_row(spec, case, ours_name, None, f"unavailable: {ours_reason}", peaks))
    else:
        call = call_of(spec, ours, inputs)
        ours_ms, status, passed = _verified_time(
            case, ours, call, device, timer, ours_name, replay_dir, grads=False
        )
        rows.append(_row(spec, case, ours_name, ours_ms, status, peaks))
        if case.variant == "paged" and ours_name == OURS and passed:
            ms, status = _time(Impl(f"{OURS}-planned", _paged_planned(inputs)), timer)
            rows.append(_row(spec, case, f"{OURS}-planned", ms, status, peaks))
            # as engines run decode steps (`launch_paged` documents it)
            ms, status = _graph_time(f"{OURS}-graph", _paged_planned(inputs), device, timer)
            rows.append(_row(spec, case, f"{OURS}-graph", ms, status, peaks))
        if case.variant == "gqa" and ours_name == OURS and passed:
            ms, status = _graph_time(f"{OURS}-graph", call, device, timer)
            rows.append(_row(spec, case, f"{OURS}-graph", ms, status, peaks))
        if case.variant == "varlen" and ours_name == OURS and passed:
            call = _varlen_host_cu(spec, ours, inputs)
            ms, status = _time(Impl(f"{OURS}-host-cu", call), timer)
            rows.append(_row(spec, case, f"{OURS}-host-cu", ms, status, peaks))
            ms, status = _graph_time(f"{OURS}-graph", call, device, timer)
            rows.append(_row(spec, case, f"{OURS}-graph", ms, status, peaks))
            dense = dense_of_varlen(case, inputs)
            if dense is not None:
                rows.extend(_dense_rows(spec, case, dense, device, timer, peaks, replay_dir))
    rows.extend(_baseline_rows(spec, case, baselines(spec, case, inputs), ours_ms, timer, peaks))
    if spec.bench_backward(case):
        rows.extend(
            _bench_backward(spec, case, ours, inputs, device, timer, peaks, ours_name, replay_dir)
        )
    return rows


def _verified_time(
    case: Any,
    ours: Callable[..., Any],
    call: Callable[[], Any],
    device: torch.device,
    timer: Timer,
    name: str,
    replay_dir: Path | None,
    *,
    grads: bool,
    at: str = "",
) -> tuple[float | None, str, bool]:
    """`check` of ours at the one `case` (a failure's replay file under `replay_dir`), then,
    if it passed, `call` timed: (ms or None, status, passed). A failure's status names the
    failing quantities, and `at` the shape they failed at when it is not the timed one."""
    from attnverify.verify.runner import check

    report = check(
        case.variant, ours, cases=[case], device=device, grads=grads, replay_dir=replay_dir,
        target=name,
    )  # fmt: skip
    if not report.passed:
        failed = "; ".join(_failure_summary(r) for r in report.failures)
        return None, f"failed verification{at}: {failed}", False
    ms, status = _time(Impl(name, call), timer)
    return ms, status, True


def _baseline_rows(
    spec: Any,
    case: Any,
    impls: Sequence[Impl],
    ours_ms: float | None,
    timer: Timer,
    peaks: Peaks | None,
    *,
    backward: bool = False,
) -> list[BenchRow]:
    rows = []
    for impl in impls:
        ms, status = _time(impl, timer)
        row = _row(spec, case, impl.name, ms, status, peaks, backward=backward)
        if ms is not None and ours_ms is not None:
            row.speedup = ms / ours_ms
        rows.append(row)
    return rows


def _bench_backward(
    spec: Any,
    case: Any,
    ours: Callable[..., Any] | None,
    inputs: dict[str, Any],
    device: torch.device,
    timer: Timer,
    peaks: Peaks | None,
    ours_name: str,
    replay_dir: Path | None,
) -> list[BenchRow]:
    """The backward rows of a shape: ours (its gradients verified first, at the shape's
    lengths cut to BACKWARD_VERIFY_LENGTH) and `backward_baselines`, each timing the backward
    alone; TFLOP/s count BACKWARD_WORK x the forward's FLOPs."""
    rows = []
    ours_ms = None
    if ours is not None:
        short = shortened(case, BACKWARD_VERIFY_LENGTH)
        call = backward_call_of(spec, ours, inputs)
        ours_ms, status, _ = _verified_time(
            short, ours, call, device, timer, ours_name, replay_dir, grads=True,
            at=f" at {shape_label(short)}",
        )  # fmt: skip
        rows.append(_row(spec, case, ours_name, ours_ms, status, peaks, backward=True))
    impls = backward_baselines(spec, case, inputs)
    rows.extend(_baseline_rows(spec, case, impls, ours_ms, timer, peaks, backward=True))
    return rows


def shortened(case: Any, length: int) -> Any:
    """`case` with every sequence length cut to at most `length` (gqa / fp8 Lq, Lk and the
    matching mask and bias dims; varlen each sequence): the same kernels and flags at a size
    whose float64 oracle backward fits a GPU (at L = 8192 it would hold ~100 GB)."""
    if case.variant == "varlen":
        return dataclasses.replace(
            case,
            seqlens_q=tuple(min(n, length) for n in case.seqlens_q),
            seqlens_k=tuple(min(n, length) for n in case.seqlens_k),
        )
    lq, lk = min(case.lq, length), min(case.lk, length)

    def cut(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is None:
            return None
        return (*shape[:2], min(shape[2], lq), min(shape[3], lk))

    return dataclasses.replace(
        case, lq=lq, lk=lk, mask_shape=cut(case.mask_shape), bias_shape=cut(case.bias_shape)
    )


def _dense_rows(
    spec: Any,
    case: Any,
    dense: dict[str, Any],
    device: torch.device,
    timer: Timer,
    peaks: Peaks | None,
    replay_dir: Path | None,
) -> list[BenchRow]:
    """Our gqa kernel on a varlen shape's tokens as a dense equal-length batch
    (`dense_of_varlen`; the varlen rows' overhead is their time over these), verified first
    as the gqa case of that batch: another launch path than the varlen rows'. Two rows, as
    the varlen call has: `attnverify-dense` launched from the stream, and, once verified,
    `attnverify-dense-graph` replayed from a CUDA graph (GPU time alone)."""
    from attnverify.kernels import gqa_attention
    from attnverify.verify.specs import get_spec

    name = f"{OURS}-dense"
    q = dense["q"]
    gqa_case = dataclasses.replace(
        case, variant="gqa", batch=q.shape[0], lq=q.shape[2], lk=dense["k"].shape[2],
        seqlens_q=(), seqlens_k=(),
    )  # fmt: skip
    call = call_of(get_spec("gqa"), gqa_attention, dense)
    ms, status, passed = _verified_time(
        gqa_case, gqa_attention, call, device, timer, name, replay_dir, grads=False
    )
    rows = [_row(spec, case, name, ms, status, peaks)]
    if passed:
        ms, status = _graph_time(f"{name}-graph", call, device, timer)
        rows.append(_row(spec, case, f"{name}-graph", ms, status, peaks))
    return rows


def _paged_planned(inputs: dict[str, Any]) -> Callable[[], Any]:
    """Our paged kernel as a serving engine calls it: inputs validated and the launch planned
    once (`plan_paged`, which reads block tables on the host), then only `launch_paged` timed.
    The public `paged_attention` row pays that host read on every call."""
    from attnverify.kernels.paged import launch_paged, plan_paged

    tensors = [inputs[n] for n in ("q", "k_cache", "v_cache", "block_tables", "seq_lens")]
    descales = (inputs["k_descale"], inputs["v_descale"])
    layout = inputs["kv_layout"]
    plan = plan_paged(
        *tensors,
        scale=inputs["scale"],
        k_descale=descales[0],
        v_descale=descales[1],
        num_splits=inputs["num_splits"],
        kv_layout=layout,
    )
    return lambda: launch_paged(
        *tensors,
        *descales,
        scale=plan.scale,
        num_splits=plan.num_splits,
        kv_layout=layout,
        config=plan.config,
    )


def _graph_time(
    name: str, launch: Callable[[], Any], device: torch.device, timer: Timer
) -> tuple[float | None, str]:
    """`launch` captured once in a CUDA graph, its replay timed: the call's GPU time, free of
    the host's Python and Triton launch cost, which a stream-launched call pays every time
    and which is the whole measurement where it exceeds the kernel's time. The replay must
    give the eager launch's output (its first tensor) bitwise, else the row is an error."""
    if device.type != "cuda":
        return None, "unavailable: CUDA graphs need a CUDA device"

    def first(result: Any) -> torch.Tensor:
        return result[0] if isinstance(result, tuple | list) else result

    try:
        eager = first(launch()).clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = first(launch())
        graph.replay()
    except Exception as exc:
        return None, f"error: capture failed: {type(exc).__name__}: {str(exc)[:160]}"
    if not torch.equal(captured, eager):
        return None, "error: the graph replay differs from the eager launch"
    return _time(Impl(name, graph.replay), timer)


def _varlen_host_cu(
    spec: Any, ours: Callable[..., Any], inputs: dict[str, Any]
) -> Callable[[], Any]:
    """Our varlen call with cu_seqlens on the CPU (copied there once, as a vision encoder
    building them from a host grid_thw would have them): its host read of the lengths needs
    no device sync. The public row passes them on the device and pays that sync per call.
    The kernel and its results are the same (tests/kernels/test_varlen.py)."""
    host = {name: inputs[name].cpu() for name in ("cu_seqlens_q", "cu_seqlens_k")}
    return call_of(spec, ours, {**inputs, **host})


def _failure_summary(result: Any) -> str:
    """Failing quantities, or the error's first and last lines (a compile error's cause is
    last), and the replay file."""
    if result.error:
        lines = [line.strip() for line in result.error.strip().splitlines() if line.strip()]
        what = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1][:300]}"
    else:
        what = ", ".join(c.path for c in result.comparisons if not c.passed)
    return f"{what} (replay: {result.replay_path})"


def bench_variant(
    variant: str,
    *,
    target: str,
    device: torch.device,
    timer: Timer,
    peaks: Peaks | None,
    out: TextIO,
    cases: Sequence[Any] | None = None,
    max_shapes: int | None = None,
    replay_dir: Path | None = None,
) -> list[BenchRow]:
    """Every shape of `variant` (`cases`, default the spec's `bench_cases()`), table printed."""
    from attnverify.verify.specs import get_spec
    from attnverify.verify.targets import resolve_target

    try:
        spec = get_spec(variant)
        shapes = list(cases) if cases is not None else spec.bench_cases()
    except Exception as exc:
        out.write(f"{variant}: skipped, no spec or bench shapes ({type(exc).__name__}: {exc})\n")
        return []
    shapes = shapes[:max_shapes] if max_shapes is not None else shapes
    try:
        ours, reason = resolve_target(target, variant), ""
    except ValueError as exc:
        ours, reason = None, str(exc)
        out.write(f"{variant}: {target} skipped: {reason}\n")
    rows: list[BenchRow] = []
    start = time.perf_counter()
    for index, case in enumerate(shapes, 1):
        done = bench_shape(
            spec,
            case,
            ours,
            device=device,
            timer=timer,
            peaks=peaks,
            ours_name=target,
            ours_reason=reason,
            replay_dir=replay_dir,
        )
        rows.extend(done)
        mine = done[0]
        result = mine.status if mine.value is None else f"{mine.value:.1f} {mine.unit}"
        out.write(
            f"{variant} [{index}/{len(shapes)}] {shape_label(case)}: {mine.impl} {result} "
            f"({time.perf_counter() - start:.0f} s)\n"
        )
        out.flush()
    out.write(f"\n{variant}\n{bench_table(rows)}\n")
    return rows


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def bench_table(rows: Sequence[BenchRow]) -> str:
    """Shape, implementation, ms, TFLOP/s or GB/s, % of peak, ours' speedup, status."""
    unit = rows[0].unit if rows else "TFLOP/s"
    headers = ("shape", "impl", "ms", unit, "% peak", "ours speedup", "status")
    body = [
        (
            r.shape,
            r.impl,
            _num(r.ms, ".3f"),
            _num(r.value, ".1f"),
            _num(r.pct_peak, ".1f"),
            "-" if r.speedup is None else f"{r.speedup:.2f}x",
            r.status,
        )
        for r in rows
    ]
    return format_table(headers, body) if body else "(no shapes)"


def write_json(path: Path, rows: Sequence[BenchRow], meta: dict[str, Any], peaks: Peaks) -> Path:
    """JSON: {"meta": ..., "peaks": ..., "rows": [...]} with meta copied into every row."""
    for row in rows:
        row.meta = meta
    body = {"meta": meta, "peaks": asdict(peaks), "rows": [asdict(r) for r in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body, indent=1) + "\n")
    partial.replace(path)  # atomic: a run killed while writing keeps the previous file
    return path


def plot(path: Path, rows: Sequence[BenchRow]) -> Path:
    """TFLOP/s (or GB/s) vs length, one panel per variant, one series per implementation and
    shape family (the shape label without its lengths).

    Raises:
        RuntimeError: matplotlib is not installed (`pip install 'attnverify[plot]'`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "--plot needs matplotlib: pip install 'attnverify[plot]' (or matplotlib)"
        ) from exc
    variants = list(dict.fromkeys(r.variant for r in rows))
    fig, axes = plt.subplots(len(variants), 1, figsize=(8, 3.5 * max(1, len(variants))))
    axes = [axes] if len(variants) == 1 else list(axes)
    for ax, variant in zip(axes, variants, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r.variant == variant and r.value is not None:
                series.setdefault(_series(r), []).append((r.length, r.value))
        for key, points in series.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        unit = next((r.unit for r in rows if r.variant == variant), "")
        ax.set_title(variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("length")
        ax.set_ylabel(unit)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _series(row: BenchRow) -> str:
    """A plot series: the implementation and the shape without its length tokens."""
    kept = [t for t in row.shape.split() if not re.match(r"(L\d|N\d|ctx|lead)", t)]
    return " ".join([row.impl, *kept])


def bench_meta(device: torch.device) -> dict[str, Any]:
    """Device, versions, git sha and time for the JSON rows."""
    env = records.current_environment(device)
    return {
        "device": env.device,
        "device_name": env.device_name,
        "arch": env.arch,
        "torch": env.torch_version,
        "triton": env.triton_version,
        "git_sha": env.git_sha,
        "time": utc_now(),
    }


def run(args: argparse.Namespace, out: TextIO) -> int:
    """The `bench` subcommand (see the module docstring); returns the exit status."""
    from attnverify.verify.cli import select_device

    try:
        device = select_device(args.device)
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return EXIT_USAGE
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        out.write("error: --plot needs matplotlib: pip install 'attnverify[plot]'\n")
        return EXIT_USAGE
    if device.type != "cuda":
        out.write(
            "bench needs a GPU: timings under the Triton CPU interpreter mean nothing. "
            "Run it on a CUDA device (attnverify bench --device cuda:0); to check the "
            "kernels on this machine run attnverify verify.\n"
        )
        return EXIT_USAGE
    torch.cuda.set_device(device)
    peaks = measure_peaks(device)
    meta = bench_meta(device)
    out.write(
        f"{meta['device_name']} ({meta['arch']}), torch {meta['torch']}, triton {meta['triton']}\n"
        f"measured peaks: bf16 matmul {peaks.matmul_tflops:.0f} TFLOP/s, fp8 matmul "
        f"{_num(peaks.fp8_matmul_tflops, '.0f')} TFLOP/s, copy {peaks.copy_gbps:.0f} GB/s\n"
    )
    rows: list[BenchRow] = []
    for variant in dict.fromkeys(args.variant or records.VARIANTS):
        rows.extend(
            bench_variant(
                variant,
                target=args.target,
                device=device,
                timer=do_bench_timer,
                peaks=peaks,
                out=out,
                max_shapes=args.max_shapes,
            )
        )
        if args.json:  # after every variant: a run cut short keeps the variants it finished
            write_json(args.json, rows, meta, peaks)
    if args.json:
        out.write(f"json: {args.json}\n")
    if args.plot:
        try:
            out.write(f"plot: {plot(args.plot, rows)}\n")
        except RuntimeError as exc:
            out.write(f"error: {exc}\n")
            return EXIT_USAGE
    failed = any(r.status.startswith("failed verification") for r in rows)
    return EXIT_FAILED if failed else EXIT_OK


__all__ = [
    "BenchRow",
    "Impl",
    "Peaks",
    "baselines",
    "bench_shape",
    "bench_table",
    "bench_variant",
    "do_bench_timer",
    "measure_peaks",
    "plot",
    "run",
    "shape_label",
    "shape_length",
    "shortened",
    "write_json",
]
