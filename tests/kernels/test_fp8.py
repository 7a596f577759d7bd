"""fp8 attention (`kernels.fp8`; jit code: `kernels._fp8_kernels`) vs the oracle (`verify.check`).

Without a GPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 is set before
triton is imported). There the kernel rounds P to the fp8 grid in fp32 arithmetic before the
cast, because the interpreter's fp32 -> fp8 cast mis-rounds (triton #8322, see the kernel), so
the interpreter result follows a GPU's round-to-nearest-even and the tolerance table needs no
interpreter entry.

Also: the V layout policy with fake arches (`ATTNVERIFY_ARCH`), `prepare_fp8_v`, bitwise
identity across V layouts and load paths, head-dim splitting, and input errors.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import triton
from _jit_process import run_jit_process
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify.arch import ARCH_ENV, arch_from_name, current_arch
from attnverify.kernels import _autotune
from attnverify.kernels import fp8 as kfp8
from attnverify.kernels.fp8 import fp8_attention, prepare_fp8_v, split_head_dim
from attnverify.reference.fp8 import quantize_fp8
from attnverify.verify import check
from attnverify.verify.case import Case
from attnverify.verify.fp8 import FP8_LAYOUTS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
REPLAY_DIR = Path(tempfile.gettempdir()) / "attnverify-test-fp8-failures"
# Interpreter-sized draws: each case stays well under a second on one CPU core.
HEAD_DIMS = (16, 32, 48, 64, 80, 96, 144)


def _fp8_case(
    *,
    dtype: str = "float8_e4m3fn",
    seed: int = 0,
    batch: int = 1,
    heads: tuple[int, int] = (2, 1),
    head_dim: int = 64,
    lq: int = 17,
    lk: int = 33,
    causal: bool = False,
    layout: str = "contiguous",
    out_dtype: str = "float16",
    descale: str = "tensor",
    distribution: str = "normal",
    scale: float | None = None,
) -> Case:
    return Case(
        variant="fp8",
        dtype=dtype,
        seed=seed,
        batch=batch,
        heads_q=heads[0],
        heads_k=heads[1],
        head_dim=head_dim,
        lq=lq,
        lk=lk,
        causal=causal,
        layout=layout,
        out_dtype=out_dtype,
        descale=descale,
        distribution=distribution,
        scale=scale,
    )


@st.composite
def kernel_cases(draw: st.DrawFn) -> Case:
    """Small fp8 cases for the interpreter: D % 16 == 0, GQA, causal, Lq != Lk, every layout
    (V sequence-contiguous included), per-tensor and per-head descales, both out dtypes.
    Shrinks towards one head, D = 16, Lq = 1, Lk = 0."""
    hk = draw(st.sampled_from((1, 2)))
    return _fp8_case(
        dtype=draw(st.sampled_from(("float8_e4m3fn", "float8_e5m2"))),
        seed=draw(st.integers(0, 2**16)),
        batch=draw(st.integers(1, 2)),
        heads=(hk * draw(st.sampled_from((1, 2, 3))), hk),
        head_dim=draw(st.sampled_from(HEAD_DIMS)),
        lq=draw(st.integers(1, 70)),
        lk=draw(st.integers(0, 70)),
        causal=draw(st.booleans()),
        layout=draw(st.sampled_from(FP8_LAYOUTS)),
        out_dtype=draw(st.sampled_from(("float16", "bfloat16"))),
        descale=draw(st.sampled_from(("tensor", "head"))),
        distribution=draw(st.sampled_from(("normal", "peaked", "outliers"))),
    )


def _describe(report: object) -> str:
    lines = list(report.errors)
    for r in report.failures:
        lines += [str(r.case), r.error or "", *map(str, r.comparisons)]
    return "\n".join(lines)


def _assert_passes(case: Case) -> None:
    report = check(
        "fp8", fp8_attention, cases=[case], device=DEVICE, grads=False, replay_dir=REPLAY_DIR
    )
    assert report.passed, _describe(report)


@given(case=kernel_cases())
@example(case=_fp8_case(lq=1, lk=1, head_dim=16))
@example(case=_fp8_case(lq=5, lk=0, causal=True))
@example(case=_fp8_case(lq=63, lk=111, heads=(3, 3), head_dim=80, causal=True))
@example(case=_fp8_case(lq=40, lk=9, heads=(4, 1), causal=True, descale="head"))
@example(case=_fp8_case(dtype="float8_e5m2", lq=33, lk=65, head_dim=144, layout="v_seq_contiguous"))
@example(case=_fp8_case(lq=24, lk=40, layout="transposed", distribution="peaked"))
@example(case=_fp8_case(lq=30, lk=45, causal=True, scale=-0.3, descale="head"))
def test_fp8_matches_oracle(case: Case) -> None:
    _assert_passes(case)


def _inputs(
    b: int = 1, hq: int = 2, hk: int = 1, lq: int = 19, lk: int = 37, d: int = 48, seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for h, n in ((hq, lq), (hk, lk), (hk, lk)))
    q8, qs = quantize_fp8(q, E4M3, "head", kv_heads=hk)
    k8, ks = quantize_fp8(k, E4M3, "head")
    v8, vs = quantize_fp8(v, E5M2)
    return {
        "q": q8.to(DEVICE),
        "k": k8.to(DEVICE),
        "v": v8.to(DEVICE),
        "q_descale": qs.to(DEVICE),
        "k_descale": ks.to(DEVICE),
        "v_descale": vs.to(DEVICE),
    }


def _v_layouts(v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same V values: row-major, sequence-contiguous, and a strided view into a wider buffer."""
    b, h, n, d = v.shape
    wide = torch.zeros((b, n, h, d + 16), dtype=v.dtype, device=v.device)
    wide[..., 8 : 8 + d] = v.transpose(1, 2)
    return {
        "row": v.contiguous(),
        "seq": v.transpose(-1, -2).contiguous().transpose(-1, -2),
        "strided": wide[..., 8 : 8 + d].transpose(1, 2),
    }


def _run(x: dict[str, torch.Tensor], v: torch.Tensor, causal: bool) -> list[torch.Tensor]:
    args = (x["q"], x["k"], v, x["q_descale"], x["k_descale"], x["v_descale"])
    return list(fp8_attention(*args, causal=causal, out_dtype=torch.float16, return_lse=True))


@pytest.mark.parametrize("arch", ["native", "sm90", "sm100"])
def test_fp8_bitwise_identical_across_v_layouts(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if arch != "native":
        monkeypatch.setenv(ARCH_ENV, arch)
    x = _inputs()
    results = {name: _run(x, v, causal=True) for name, v in _v_layouts(x["v"]).items()}
    row_out, row_lse = results["row"]
    for name, (out, lse) in results.items():
        assert torch.equal(out, row_out) and torch.equal(lse, row_lse), (
            f"V layout {name!r} on {arch}: max |out - out(row-major V)| = "
            f"{(out.float() - row_out.float()).abs().max().item()}"
        )


@pytest.mark.skipif(DEVICE.type == "cuda", reason="TMA forcing on the interpreter only")
@pytest.mark.parametrize("v_layout", ["row", "seq"])
def test_fp8_tma_and_pointer_loads_agree(v_layout: str) -> None:
    """The TMA-descriptor and pointer load paths compute the same values (interpreter)."""
    x = _inputs(hq=3, hk=3, lq=40, lk=50, d=80)
    # TMA needs 16-byte aligned rows: the sequence-contiguous V of an sm90 (padded pitch).
    v = kfp8._v_for_arch(x["v"], arch_from_name("sm90")) if v_layout == "seq" else x["v"]
    args = (x["q"], x["k"], v, x["q_descale"], x["k_descale"], x["v_descale"], 0.125, True)
    outs = [kfp8._launch_fwd(*args, torch.float16, True, use_tma=tma) for tma in (False, True)]
    (out_ptr, lse_ptr), (out_tma, lse_tma) = outs
    assert torch.equal(out_ptr, out_tma) and torch.equal(lse_ptr, lse_tma), (
        f"TMA vs pointer loads: max |diff| = {(out_ptr.float() - out_tma.float()).abs().max()}"
    )


@pytest.mark.parametrize(("lq", "lk", "causal"), [(5, 0, False), (40, 9, True), (3, 0, True)])
def test_fp8_empty_rows(lq: int, lk: int, causal: bool) -> None:
    """Rows with no visible key (Lk = 0; causal rows i < Lq - Lk): out exactly 0, lse -inf,
    and no NaN anywhere."""
    x = _inputs(lq=lq, lk=lk)
    out, lse = _run(x, x["v"], causal=causal)
    empty = max(0, lq - lk) if causal else (lq if lk == 0 else 0)
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.equal(out[:, :, :empty], torch.zeros_like(out[:, :, :empty]))
    assert bool((lse[:, :, :empty] == float("-inf")).all())
    assert bool(lse[:, :, empty:].isfinite().all()), "rows with a visible key have a finite lse"


def test_fp8_negative_descale_moves_into_scale() -> None:
    """A negative descale is a negative scale: bitwise the same result."""
    x = _inputs(lq=30, lk=40)
    args = (x["q"], x["k"], x["v"])
    kw = {"causal": True, "out_dtype": torch.float16, "return_lse": True}
    neg = fp8_attention(*args, -x["q_descale"], x["k_descale"], x["v_descale"], scale=0.2, **kw)
    pos = fp8_attention(*args, x["q_descale"], x["k_descale"], x["v_descale"], scale=-0.2, **kw)
    assert all(torch.equal(a, b) for a, b in zip(neg, pos, strict=True))


@pytest.mark.parametrize(
    ("arch", "copies"),
    [("sm89", True), ("sm90", True), ("sm100", False), ("gfx1201", False), ("gfx950", False)],
)
def test_fp8_prepare_v_layout_policy(
    arch: str, copies: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARCH_ENV, arch)
    assert current_arch().fp8_v_k_major is copies
    v = _inputs(lk=21)["v"]
    prepared = prepare_fp8_v(v)
    assert torch.equal(prepared.float(), v.float())
    if copies:
        assert prepared.stride(-2) == 1 and prepared.data_ptr() != v.data_ptr()
        assert prepare_fp8_v(prepared) is prepared, "already sequence-contiguous: no copy"
    else:
        assert prepared is v, f"{arch} needs no V layout: prepare_fp8_v must not copy"


@pytest.mark.parametrize(("arch", "copies"), [("sm90", True), ("sm89", True), ("sm100", False)])
def test_fp8_wrapper_enforces_layout_only_where_needed(
    arch: str, copies: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARCH_ENV, arch)
    seen: list[torch.Tensor] = []
    launch = kfp8._launch_fwd

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object, **kw: object):
        seen.append(v)
        return launch(q, k, v, *args, **kw)

    monkeypatch.setattr(kfp8, "_launch_fwd", spy)
    x = _inputs()
    _run(x, x["v"], causal=False)
    assert (seen[0] is not x["v"] and seen[0].stride(-2) == 1) if copies else seen[0] is x["v"]


def test_fp8_fnuz_on_gfx942(monkeypatch: pytest.MonkeyPatch) -> None:
    """gfx942 takes the fnuz dtypes only, names them when given OCP fp8, and needs no V copy."""
    monkeypatch.setenv(ARCH_ENV, "gfx942")
    x = _inputs()
    with pytest.raises(TypeError, match=r"gfx942.*float8_e4m3fnuz, float8_e5m2fnuz"):
        _run(x, x["v"], causal=False)
    v = x["v"].to(torch.float32).to(torch.float8_e5m2fnuz)
    assert prepare_fp8_v(v) is v
    case = _fp8_case(dtype="float8_e4m3fnuz", lq=20, lk=30, causal=True, descale="head")
    _assert_passes(case)


@pytest.mark.parametrize("arch", ["sm80", "gfx1100"])
def test_fp8_arch_without_fp8_raises(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARCH_ENV, arch)
    x = _inputs()
    with pytest.raises(TypeError, match=rf"{arch}.*no fp8.*supported fp8 dtypes: none"):
        _run(x, x["v"], causal=False)
    with pytest.raises(TypeError, match=arch):
        prepare_fp8_v(x["v"])


def test_fp8_dtype_the_arch_lacks_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ARCH_ENV, "sm90")
    x = _inputs()
    x["k"] = x["k"].float().to(torch.float8_e4m3fnuz)
    with pytest.raises(
        TypeError, match=r"k has dtype float8_e4m3fnuz.*sm90.*float8_e4m3fn, float8_e5m2"
    ):
        _run(x, x["v"], causal=False)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"q": torch.zeros(1, 2, 4, 48, dtype=torch.float16)}, TypeError, "q must have dtype"),
        (
            {n: torch.zeros(1, 2, 4, 40).to(E4M3) for n in ("q", "k", "v")},
            ValueError,
            r"D % 16 == 0; got D=40",
        ),
        ({"k_descale": torch.ones(3)}, ValueError, r"k_descale must be float32 of shape"),
        ({"v_descale": torch.ones((), dtype=torch.float64)}, ValueError, "v_descale"),
        ({"q": torch.zeros(1, 3, 4, 48).to(E4M3)}, ValueError, "multiple of kv heads"),
        ({"out_dtype": torch.float32}, TypeError, "out_dtype must be one of"),
    ],
    ids=["not-fp8", "head-dim-40", "descale-shape", "descale-dtype", "heads", "out-dtype"],
)
def test_fp8_bad_inputs_raise(change: dict, error: type, match: str) -> None:
    x = {**_inputs(hk=2), "out_dtype": torch.float16}
    x.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises(error, match=match):
        fp8_attention(**x)


@pytest.mark.parametrize("head_dim", range(16, 257, 16))
def test_fp8_split_head_dim_covers_without_2x_waste(head_dim: int) -> None:
    d0, d1 = split_head_dim(head_dim)
    chunks = [c for c in (d0, d1) if c]
    assert all(c >= kfp8.MIN_DOT_K and c & (c - 1) == 0 for c in chunks), chunks
    assert d0 <= max(head_dim, kfp8.MIN_DOT_K) and d0 + d1 >= head_dim
    # D = 16 and 48 pad to multiples of the fp8 dot's minimum K (32); from 64 up at most 25%.
    bound = math.ceil(1.25 * head_dim) if head_dim >= 64 else 2 * kfp8.MIN_DOT_K
    assert d0 + d1 <= bound, (head_dim, d0, d1)


class _Capture:
    """Stands in for the jitted kernel: records the launch instead of running it."""

    def __init__(self) -> None:
        self.args: tuple = ()
        self.kwargs: dict = {}

    def __getitem__(self, grid: object) -> _Capture:
        return self

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize(
    ("head_dim", "causal", "use_tma", "lk", "autotune_env", "expected"),
    [
        (128, False, True, 40, None, "TMA_CONFIGS"),
        (128, True, True, 40, None, "TMA_CAUSAL_CONFIGS"),
        (80, False, False, 40, None, "POINTER_CONFIGS"),
        (192, True, True, 40, None, "WIDE_CONFIGS"),
        (128, False, True, kfp8.TUNE_MIN_LK, "0", "TMA_CONFIGS"),
        (128, True, True, kfp8.TUNE_MIN_LK, None, "autotuned"),
    ],
    ids=["tma", "tma-causal", "pointer", "wide-d", "long-autotune-off", "long-autotuned"],
)
def test_fp8_gpu_launch_config_choice(
    head_dim: int,
    causal: bool,
    use_tma: bool,
    lk: int,
    autotune_env: str | None,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU launch (interpreter off, kernels stood in for) takes the first config of its
    candidate list below TUNE_MIN_LK keys or with ATTNVERIFY_AUTOTUNE=0, else the autotuner."""
    monkeypatch.setattr(kfp8, "interpreter_active", lambda: False)
    pinned, tuned = _Capture(), _Capture()
    monkeypatch.setattr(kfp8, "_fp8_fwd_kernel", pinned)
    monkeypatch.setattr(kfp8, "_fp8_fwd_tuned", tuned)
    if autotune_env is None:
        monkeypatch.delenv(_autotune.ENV, raising=False)
    else:
        monkeypatch.setenv(_autotune.ENV, autotune_env)
    x = _inputs(lq=16, lk=lk, d=head_dim)
    v = kfp8._v_for_arch(x["v"], arch_from_name("sm90")) if use_tma else x["v"]
    args = (x["q"], x["k"], v, x["q_descale"], x["k_descale"], x["v_descale"], 0.1, causal)
    kfp8._launch_fwd(*args, torch.bfloat16, True, use_tma=use_tma)
    if expected == "autotuned":
        assert tuned.kwargs and not pinned.kwargs, "long key range: the autotuner launches"
        return
    want = getattr(kfp8, expected)[0]
    got = {k: pinned.kwargs.get(k) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
    assert not tuned.kwargs, "short key range or autotuning off: no autotuner launch"
    assert got == {**want.kwargs, "num_warps": want.num_warps, "num_stages": want.num_stages}
    assert pinned.kwargs["maxnreg"] == want.maxnreg


def test_fp8_gpu_launch_rotate_policy_pins_one_candidate_per_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTNVERIFY_AUTOTUNE=rotate (the verifier's policy): no autotuner launch; each key pins
    one config of its candidate list, and different keys reach different configs."""
    monkeypatch.setattr(kfp8, "interpreter_active", lambda: False)
    monkeypatch.setattr(kfp8, "_fp8_fwd_tuned", _Capture())
    monkeypatch.setenv(_autotune.ENV, "rotate")
    seen = set()
    for head_dim in (32, 64, 96, 128):
        for causal in (False, True):
            pinned = _Capture()
            monkeypatch.setattr(kfp8, "_fp8_fwd_kernel", pinned)
            x = _inputs(lq=16, lk=kfp8.TUNE_MIN_LK, d=head_dim)
            args = (x["q"], x["k"], x["v"], x["q_descale"], x["k_descale"], x["v_descale"])
            kfp8._launch_fwd(*args, 0.1, causal, torch.bfloat16, True, use_tma=False)
            got = tuple(pinned.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
            options = [
                (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in kfp8.POINTER_CONFIGS
            ]
            assert got in options
            seen.add(got)
    assert len(seen) > 1, "rotation over 8 keys stayed on one config"


def compile_sm90(
    head_dim: int, causal: bool, use_tma: bool, v_layout: str, config: triton.Config
) -> str:
    """Compile the exact specialisation `_launch_fwd` would launch with `config`, for sm90, with
    Triton's bundled ptxas; returns its PTX. Needs a process without TRITON_INTERPRET (JIT
    functions)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import mangle_type

    kernel, capture = kfp8._fp8_fwd_kernel, _Capture()
    kfp8._fp8_fwd_kernel = capture
    try:
        x = _inputs(lq=64, lk=64, d=head_dim)
        v = kfp8._v_for_arch(x["v"], arch_from_name("sm90")) if v_layout == "seq" else x["v"]
        args = (x["q"], x["k"], v, x["q_descale"], x["k_descale"], x["v_descale"], 0.1, causal)
        kfp8._launch_fwd(*args, torch.bfloat16, True, config=config, use_tma=use_tma)
    finally:
        kfp8._fp8_fwd_kernel = kernel
    options = {k: capture.kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg")}
    values = dict(zip(kernel.arg_names, capture.args, strict=False)) | capture.kwargs
    signature, constexprs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        kind = "constexpr" if name in capture.kwargs else mangle_type(values[name], True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = values[name]
    src = ASTSource(kernel, signature, constexprs=constexprs)
    return compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the GPU compiles the kernel in other tests")
@pytest.mark.parametrize(
    ("head_dim", "causal", "use_tma", "v_layout", "config"),
    [
        (128, True, True, "seq", "GPU_CONFIGS[0]"),
        (80, False, False, "row", "GPU_CONFIGS[-1]"),
        (128, False, True, "seq", "_config(64, 128, 4, 2, maxnreg=168)"),
    ],
    ids=["D128-causal-tma", "D80-pointer-rowV", "D128-tma-maxnreg"],
)
def test_fp8_kernel_compiles_for_sm90(
    head_dim: int, causal: bool, use_tma: bool, v_layout: str, config: str
) -> None:
    """The interpreter cannot catch what only the compiler rejects (non-constexpr globals, dot
    shape limits, TMA lowering): compile specialisations for sm90 in a JIT-mode process.
    `config` is an expression in `attnverify.kernels.fp8`."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    code = (
        f"import test_fp8; from test_fp8 import kfp8; ptx = test_fp8.compile_sm90({head_dim}, "
        f"{causal}, {use_tma}, {v_layout!r}, kfp8.{config}); print('wgmma', "
        "'wgmma.mma_async' in ptx, 'tma', 'cp.async.bulk.tensor' in ptx)"
    )
    stdout = run_jit_process(code)
    assert stdout.split()[-4:] == ["wgmma", "True", "tma", str(use_tma)], stdout
