"""`attnverify bench` plumbing on the CPU: verification before timing, rows, JSON, plot.

Times here come from a stand-in timer (the real one, triton's do_bench, needs a GPU); the
numbers are meaningless, the pipeline is what is tested.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from attnverify.arch import interpreter_active
from attnverify.verify import baselines, bench
from attnverify.verify.case import Case

CPU = torch.device("cpu")
REAL_FLEX_MODULE = baselines._flex_module  # before the autouse fixture stands it in
PEAKS = bench.Peaks(matmul_tflops=1.0, copy_gbps=1.0)
GQA = Case(variant="gqa", dtype="float32", seed=1, heads_q=4, heads_k=2, head_dim=16, lq=24, lk=40)
# Tests that run our Triton kernels on CPU tensors: on a GPU machine Triton compiles for the GPU
# (conftest sets TRITON_INTERPRET only without one), so they cannot run there.
NEEDS_INTERPRETER = pytest.mark.skipif(
    not interpreter_active(), reason="runs our kernels on CPU tensors: needs TRITON_INTERPRET=1"
)
MERGE = Case(variant="merge", dtype="float32", seed=2, head_dim=16, lead_shape=(2, 3), num_states=4)


def wall_timer(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


@pytest.fixture(autouse=True)
def no_flex_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile needs a C++ toolchain and minutes on the CPU: flex is 'unavailable'."""

    def missing() -> None:
        raise ImportError("flex_attention disabled in CPU tests")

    monkeypatch.setattr(baselines, "_flex_module", missing)


def test_bench_verified_shape_gets_numbers_and_speedups(home: Path) -> None:
    out = io.StringIO()
    rows = bench.bench_variant(
        "gqa",
        target="reference",
        device=CPU,
        timer=wall_timer,
        peaks=PEAKS,
        out=out,
        cases=[GQA],
    )
    by_impl = {r.impl: r for r in rows}
    ours = by_impl["reference"]
    assert ours.status == "ok" and ours.ms is not None and ours.ms > 0
    assert ours.unit == "TFLOP/s" and ours.value is not None and ours.pct_peak is not None
    assert {"sdpa-math", "flex-compiled"} <= set(by_impl)
    assert by_impl["flex-compiled"].status.startswith("unavailable: flex_attention disabled")
    math_row = by_impl["sdpa-math"]
    assert math_row.status == "ok" and math_row.speedup is not None and math_row.speedup > 0
    assert ours.shape == "fp32 B1 H4/2 D16 L24x40" and ours.length == 40
    assert "sdpa-math" in out.getvalue() and "ours speedup" in out.getvalue()
    progress = f"gqa [1/1] fp32 B1 H4/2 D16 L24x40: reference {ours.value:.1f} TFLOP/s ("
    assert progress in out.getvalue(), out.getvalue()


def test_bench_failing_shape_gets_no_number(home: Path, tmp_path: Path) -> None:
    def wrong_merge(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from attnverify.verify.targets import resolve_target

        merged, merged_lse = resolve_target("reference", "merge")(out, lse)
        return merged + 1, merged_lse

    from attnverify.verify.specs import get_spec

    spec = get_spec("merge")
    rows = bench.bench_shape(
        spec,
        MERGE,
        wrong_merge,
        device=CPU,
        timer=wall_timer,
        peaks=PEAKS,
        ours_name="wrong",
        replay_dir=tmp_path,
    )
    ours = rows[0]
    assert (ours.impl, ours.ms, ours.value) == ("wrong", None, None)
    assert ours.status.startswith("failed verification: merge/float32/out")
    assert str(tmp_path) in ours.status
    eager = next(r for r in rows if r.impl == "torch-eager")
    assert eager.status == "ok" and eager.unit == "GB/s" and eager.speedup is None


def test_bench_missing_implementation_is_skipped_with_a_message(home: Path) -> None:
    out = io.StringIO()
    rows = bench.bench_variant(
        "merge",
        target="no_such_module_xyz:attention",
        device=CPU,
        timer=wall_timer,
        peaks=PEAKS,
        out=out,
        cases=[MERGE],
    )
    assert "skipped: target 'no_such_module_xyz:attention': cannot import" in out.getvalue()
    assert rows[0].status.startswith("unavailable: ") and rows[0].ms is None
    assert any(r.impl == "torch-eager" and r.ms is not None for r in rows)


def test_bench_json_rows_carry_device_versions_and_time(home: Path, tmp_path: Path) -> None:
    rows = bench.bench_variant(
        "merge",
        target="reference",
        device=CPU,
        timer=wall_timer,
        peaks=PEAKS,
        out=io.StringIO(),
        cases=[MERGE],
    )
    meta = bench.bench_meta(CPU)
    (tmp_path / "b.json").write_text("{}")  # an earlier variant's file: replaced whole
    body = json.loads(bench.write_json(tmp_path / "b.json", rows, meta, PEAKS).read_text())
    assert [f.name for f in tmp_path.iterdir()] == ["b.json"], "a partial file was left"
    assert body["peaks"] == {"matmul_tflops": 1.0, "copy_gbps": 1.0, "fp8_matmul_tflops": None}
    for row in body["rows"]:
        assert {"device", "device_name", "torch", "triton", "git_sha", "time"} <= set(row["meta"])
        assert row["case"]["variant"] == "merge"
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) not installed")
    png = bench.plot(tmp_path / "b.png", rows)
    assert png.read_bytes().startswith(b"\x89PNG")


PAGED = Case(
    variant="paged",
    dtype="float16",
    seed=3,
    heads_q=2,
    heads_k=1,
    head_dim=16,
    seq_lens=(20,),
    block_size=16,
    num_blocks=3,
    block_tables=((2, 0),),
)
VARLEN = Case(
    variant="varlen",
    dtype="float16",
    seed=4,
    heads_q=2,
    heads_k=1,
    head_dim=16,
    seqlens_q=(5, 0, 9),
    seqlens_k=(5, 0, 9),
)


FP8 = Case(
    variant="fp8", dtype="float8_e4m3fn", seed=5, heads_q=2, heads_k=1, head_dim=32, lq=8, lk=8
)


class FixedWork:
    """A spec stand-in: 2e12 FLOPs or 4e9 bytes per call, whatever the case."""

    def flops(self, case: Case) -> float:
        return 2e12

    def bytes_moved(self, case: Case) -> float:
        return 4e9


@pytest.mark.parametrize(
    ("case", "fp8_peak", "pct"),
    [(FP8, 1600.0, 50.0), (FP8, None, None), (GQA, 1600.0, 100.0), (PAGED, 1600.0, 40.0)],
    ids=["fp8-of-fp8-peak", "fp8-unmeasured", "gqa-of-bf16-peak", "paged-of-copy"],
)
def test_bench_pct_peak_is_of_the_kernels_own_ceiling(
    case: Case, fp8_peak: float | None, pct: float | None
) -> None:
    """2.5 ms: 800 TFLOP/s or 1600 GB/s. fp8 rows are a % of the fp8 matmul peak, none when it
    was not measured (never of the bf16 peak: an fp8 kernel would read over 100%)."""
    peaks = bench.Peaks(matmul_tflops=800.0, copy_gbps=4000.0, fp8_matmul_tflops=fp8_peak)
    row = bench._row(FixedWork(), case, "attnverify", 2.5, "ok", peaks)
    assert row.pct_peak == (None if pct is None else pytest.approx(pct))


@NEEDS_INTERPRETER
@pytest.mark.parametrize(
    ("case", "second", "unit"),
    [(PAGED, "attnverify-planned", "GB/s"), (VARLEN, "attnverify-host-cu", "TFLOP/s")],
    ids=["paged-planned", "varlen-host-cu"],
)
def test_bench_times_a_second_row_of_ours(home: Path, case: Case, second: str, unit: str) -> None:
    """Our kernel gets a second row as engines and models call it: paged validated and
    planned once, then only launched; varlen with cu_seqlens on the CPU (no device sync to
    read them; on this CPU run both rows hold CPU cu_seqlens)."""
    rows = bench.bench_variant(
        case.variant,
        target="attnverify",
        device=CPU,
        timer=wall_timer,
        peaks=PEAKS,
        out=io.StringIO(),
        cases=[case],
    )
    by_impl = {r.impl: r for r in rows}
    assert {"attnverify", second} <= set(by_impl), by_impl
    for name in ("attnverify", second):
        row = by_impl[name]
        assert row.status == "ok" and row.ms is not None and row.unit == unit, row


@NEEDS_INTERPRETER
@pytest.mark.parametrize(
    ("case", "graphs"),
    [
        (PAGED, {"attnverify-graph"}),
        (GQA, {"attnverify-graph"}),
        (dataclasses.replace(VARLEN, seqlens_q=(6, 6), seqlens_k=(6, 6)),
         {"attnverify-graph", "attnverify-dense-graph"}),
    ],
    ids=["paged", "gqa", "varlen"],
)  # fmt: skip
def test_bench_graph_rows_need_cuda(home: Path, case: Case, graphs: set[str]) -> None:
    """The CUDA-graph rows (paged: the planned launch replayed, as engines run decode steps;
    gqa: the public call; varlen: the host-cu call and the dense call; GPU time alone) say
    why they are missing on a CPU instead of timing something else."""
    rows = bench.bench_variant(
        case.variant, target="attnverify", device=CPU, timer=wall_timer, peaks=PEAKS,
        out=io.StringIO(), cases=[case],
    )  # fmt: skip
    graph_rows = [r for r in rows if r.impl.endswith("-graph")]
    assert {r.impl for r in graph_rows} == graphs, rows
    for row in graph_rows:
        assert row.ms is None and row.status == "unavailable: CUDA graphs need a CUDA device"


def _dense_rows(case: Case) -> list[bench.BenchRow]:
    rows = bench.bench_variant(
        "varlen", target="attnverify", device=CPU, timer=wall_timer, peaks=PEAKS,
        out=io.StringIO(), cases=[case],
    )  # fmt: skip
    return [r for r in rows if r.impl == "attnverify-dense"]


EQUAL = dataclasses.replace(VARLEN, seqlens_q=(6, 6), seqlens_k=(6, 6))


@NEEDS_INTERPRETER
def test_bench_dense_row_for_equal_length_varlen(home: Path) -> None:
    """Equal lengths: our gqa kernel on the same tokens as a dense batch (the varlen
    overhead's reference); mixed lengths have none."""
    for case, expected in ((EQUAL, True), (VARLEN, False)):
        dense = _dense_rows(case)
        assert bool(dense) == expected
        assert all(r.status == "ok" and r.ms is not None for r in dense)


@NEEDS_INTERPRETER
def test_bench_dense_row_is_verified_first(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense row runs the gqa launch path, not the varlen rows': a wrong gqa kernel gets
    no number there."""
    import attnverify.kernels as kernels

    real = kernels.gqa_attention
    monkeypatch.setattr(kernels, "gqa_attention", lambda *a, **kw: real(*a, **kw) + 1)
    (dense,) = _dense_rows(EQUAL)
    assert dense.ms is None and dense.status.startswith("failed verification"), dense


@pytest.mark.parametrize("variant", ["gqa", "varlen"])
def test_bench_backward_rows_verify_then_time_the_backward(home: Path, variant: str) -> None:
    """A shape whose spec asks for it gets "bwd" rows: ours (gradients verified at the cut
    lengths, then the backward alone timed, at 2.5x the forward's FLOPs) and the backward
    baselines with speedups; gqa's flash baseline runs without the bias."""
    from attnverify.verify.specs import get_spec

    case = {
        "gqa": dataclasses.replace(GQA, dtype="bfloat16", bias_shape=(1, 1, 24, 40),
                                   bias_dtype="bfloat16"),
        "varlen": dataclasses.replace(VARLEN, head_dim=128, seqlens_q=(7, 7), seqlens_k=(7, 7)),
    }[variant]  # fmt: skip
    spec = get_spec(variant)
    assert spec.bench_backward(case)
    calls = []
    rows = bench.bench_variant(
        variant, target="reference", device=CPU, timer=lambda fn: calls.append(fn) or 2.0,
        peaks=PEAKS, out=io.StringIO(), cases=[case],
    )  # fmt: skip
    backward = {r.impl: r for r in rows if r.shape.endswith(" bwd")}
    ours = backward["reference"]
    assert ours.status == "ok" and ours.ms == 2.0
    assert ours.value == pytest.approx(bench.BACKWARD_WORK * spec.flops(case) / 2e-3 / 1e12)
    flash = backward["sdpa-flash-no-bias" if variant == "gqa" else "sdpa-flash-dense"]
    assert flash.status == "ok" and flash.speedup == 1.0, flash
    timed_forward = sum(r.ms is not None for r in rows if not r.shape.endswith(" bwd"))
    grads = calls[timed_forward]()  # ours' backward: the gradients of q, k, v (and the bias)
    assert len(grads) == (4 if variant == "gqa" else 3)


class _DoubledGrad(torch.autograd.Function):
    """Identity forward, twice the gradient backward: a kernel whose forward is right and
    whose backward is wrong."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return 2 * grad


def test_bench_backward_row_gets_no_number_when_its_gradients_fail(home: Path) -> None:
    """Ours' backward is verified (at the cut lengths) before it is timed: a kernel with a
    wrong backward keeps its forward number and gets none for the backward, the status naming
    the shape the gradients failed at."""
    from attnverify.verify.specs import get_spec
    from attnverify.verify.targets import resolve_target

    reference = resolve_target("reference", "varlen")

    def wrong_backward(*args: Any, **kwargs: Any) -> Any:
        got = reference(*args, **kwargs)
        if isinstance(got, tuple):
            return (_DoubledGrad.apply(got[0]), *got[1:])
        return _DoubledGrad.apply(got)

    case = dataclasses.replace(VARLEN, head_dim=128, seqlens_q=(7, 7), seqlens_k=(7, 7))
    rows = bench.bench_shape(
        get_spec("varlen"), case, wrong_backward, device=CPU, timer=wall_timer, peaks=PEAKS,
        ours_name="wrong",
    )  # fmt: skip
    forward = next(r for r in rows if r.impl == "wrong" and not r.shape.endswith(" bwd"))
    backward = next(r for r in rows if r.impl == "wrong" and r.shape.endswith(" bwd"))
    assert forward.status == "ok" and forward.ms is not None
    label = bench.shape_label(bench.shortened(case, bench.BACKWARD_VERIFY_LENGTH))
    assert backward.ms is None, backward
    assert backward.status.startswith(f"failed verification at {label}: varlen/"), backward


def test_bench_shortened_cuts_lengths_and_matching_mask_bias_dims() -> None:
    gqa = dataclasses.replace(GQA, lq=3000, lk=5000, mask_shape=(1, 1, 1, 5000),
                              mask_kind="random", bias_shape=(1, 2, 3000, 5000))  # fmt: skip
    short = bench.shortened(gqa, 1024)
    assert (short.lq, short.lk) == (1024, 1024)
    assert short.mask_shape == (1, 1, 1, 1024) and short.bias_shape == (1, 2, 1024, 1024)
    varlen = bench.shortened(
        dataclasses.replace(VARLEN, seqlens_q=(2000, 9), seqlens_k=(9, 3000)), 1024
    )
    assert varlen.seqlens_q == (1024, 9) and varlen.seqlens_k == (9, 1024)


def test_flex_baseline_lifts_dynamo_recompile_limit() -> None:
    """A bench run compiles flex_attention once per shape: past dynamo's default of 8
    recompiles it would silently time the eager flex_attention."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(cache_size_limit=8, accumulated_cache_size_limit=8):
        REAL_FLEX_MODULE()
        assert dynamo_config.cache_size_limit >= baselines.FLEX_RECOMPILE_LIMIT
        assert dynamo_config.accumulated_cache_size_limit >= baselines.FLEX_RECOMPILE_LIMIT


def test_bench_shape_labels_tell_every_bench_shape_apart() -> None:
    """Each variant's bench shapes get distinct labels (a paged fp8 cache beside its bf16 twin,
    fp8 per-head beside per-tensor descales), so a table row names one shape."""
    from attnverify.verify.specs import get_spec

    for variant in ("varlen", "gqa", "fp8", "paged"):
        labels = [bench.shape_label(c) for c in get_spec(variant).bench_cases()]
        assert len(set(labels)) == len(labels), sorted(labels)
    assert bench.shape_label(dataclasses.replace(PAGED, cache_dtype="float8_e4m3fn")).endswith(
        " e4m3-cache"
    )


def test_fp8_baselines_name_the_flex_row_the_targets_read() -> None:
    """ci/targets.py reads #7's FlexAttention ratio from the `flex-compiled-fp8` row; here flex
    is disabled (no compile on the CPU), so the row is there, unavailable, under that name."""
    from attnverify.verify.specs import get_spec

    spec = get_spec("fp8")
    case = Case(variant="fp8", dtype="float8_e4m3fn", seed=1, head_dim=32, lq=8, lk=8)
    impls = baselines.baselines(spec, case, spec.make_inputs(case, CPU))
    flex = [i for i in impls if i.name == "flex-compiled-fp8"]
    assert len(flex) == 1 and flex[0].fn is None, [i.name for i in impls]
    assert "flex_attention disabled" in flex[0].reason


PAGED_TWO = dataclasses.replace(
    PAGED,
    batch=2,
    seq_lens=(20, 20),
    num_blocks=5,
    block_tables=((2, 0), (4, 1)),
    heads_q=4,
    heads_k=2,
)


@pytest.mark.parametrize("kv_layout", ["NHD", "HND"])
def test_paged_sdpa_baselines_attend_the_same_keys(kv_layout: str) -> None:
    """The paged SDPA baselines (`sdpa-cudnn-contiguous`, `sdpa-flash-contiguous`, the rows
    ci/targets.py reads) attend the keys and values of the paged cache gathered contiguously:
    called outside their backend (SDPA math on the CPU) they give the paged oracle's out. A
    gather that read other pages, or the NaN of unused slots, would not."""
    from attnverify.reference import paged as ref
    from attnverify.verify.compare import compare
    from attnverify.verify.specs import get_spec
    from attnverify.verify.tolerance import arch_kind, lookup

    spec = get_spec("paged")
    case = dataclasses.replace(PAGED_TWO, kv_layout=kv_layout)
    inputs = spec.make_inputs(case, CPU)
    impls = baselines.baselines(spec, case, inputs)
    assert [i.name for i in impls] == list(baselines.CONTIGUOUS_SDPA), impls
    args = {n: inputs[n] for n in ("q", "k_cache", "v_cache", "block_tables", "seq_lens")}
    flags = {"scale": inputs["scale"], "kv_layout": kv_layout}
    want = ref.paged_attention(**args, **flags)
    base = ref.paged_attention(**args, **flags, compute_dtype=torch.float16)
    rule = lookup("paged", "float16", "out", arch_kind(CPU))
    for impl in impls:
        assert impl.fn is not None, impl.reason
        got = impl.fn()
        result = compare(f"{impl.name}/out", "out", got, want, base, rule, torch.float16)
        assert result.passed, str(result)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"lq": 4}, "top-left"),
        ({"cache_dtype": "float8_e4m3fn"}, "no float8_e4m3fn KV cache"),
        ({"seq_lens": (20, 17)}, "different lengths"),
    ],
    ids=["lq4", "fp8-cache", "unequal"],
)
def test_paged_sdpa_baselines_say_why_they_are_missing(change: dict, reason: str) -> None:
    """Where SDPA would compute something else, both rows are unavailable, with the reason."""
    from attnverify.verify.specs import get_spec

    spec = get_spec("paged")
    case = dataclasses.replace(PAGED_TWO, **change)
    impls = baselines.baselines(spec, case, spec.make_inputs(case, CPU))
    assert [i.name for i in impls] == list(baselines.CONTIGUOUS_SDPA), impls
    assert all(i.fn is None and reason in i.reason for i in impls), impls
