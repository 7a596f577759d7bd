"""TMA-descriptor K/V loads of the flash forward (`_flash.flash_forward`, issues #5 / #6).

The forward loads K and V through TMA descriptors or pointers (`_flash.tma_policy`,
`$ATTNVERIFY_FLASH_TMA`); both paths compute the same values, so out and lse must be bitwise
equal. On the CPU the interpreter runs the descriptor loads (forced with "1"); the sm90 lowering
is checked by compiling in a JIT-mode process. Properties: bitwise agreement (varlen and gqa,
every launch path: autotuner, pinned policy, pinned config), non-finite rows of the next
sequence never reach a varlen sequence's output, and the policy picks TMA only where it may.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from _jit_process import run_jit_process
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnverify.arch import ARCH_ENV
from attnverify.kernels import _autotune, _flash
from attnverify.kernels._flash import FlashConfig
from attnverify.kernels.gqa import gqa_attention
from attnverify.kernels.varlen import varlen_attention, varlen_forward
from attnverify.reference.varlen import varlen_attention as varlen_oracle

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEAD_DIMS = (16, 72, 80, 200)  # one lane tile, 64 + 16, 64 + 16, 128 + 128
# TMA boxes stay inside the tensor: K/V need at least the largest key block of rows
MIN_ROWS = _flash._largest_key_block(None)


@contextmanager
def env(name: str, value: str) -> Iterator[None]:
    """`$name` = value inside the block (hypothesis tests cannot take function fixtures)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name)
        else:
            os.environ[name] = old


def cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=DEVICE)


def randn(*shape: int, g: torch.Generator, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def both_paths(
    call, is_varlen: bool, k: torch.Tensor, v: torch.Tensor, config: FlashConfig | None = None
) -> list[tuple]:
    """[(out, lse) with pointer loads, (out, lse) with TMA loads]; asserts the TMA path is
    really taken (the layout is TMA-legal)."""
    block = _flash._largest_key_block(config)
    with env(_flash.TMA_ENV, "1"):
        assert _flash._use_tma(k, k, v, is_varlen, block), "test inputs must be TMA-legal"
    results = []
    for mode in ("0", "1"):
        with env(_flash.TMA_ENV, mode):
            results.append(call())
    return results


def assert_bitwise(results: list[tuple], what: str) -> None:
    (out_p, lse_p), (out_t, lse_t) = results
    diff = (out_p.float() - out_t.float()).abs().nan_to_num(float("inf")).max().item()
    assert torch.equal(out_p, out_t), f"{what}: out differs, max |TMA - pointer| = {diff}"
    assert torch.equal(lse_p, lse_t), f"{what}: lse differs"


def _with_long(short: list[int], long: int) -> list[int]:
    """`short` with a sequence of `long` tokens after its first one (K/V reach MIN_ROWS)."""
    return [*short[:1], long, *short[1:]]


@settings(max_examples=4)
@given(
    lens=st.builds(
        _with_long,
        st.lists(st.integers(0, 90), max_size=2),
        st.integers(MIN_ROWS, MIN_ROWS + 60),
    ),
    hk=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    d=st.sampled_from(HEAD_DIMS),
    causal=st.booleans(),
)
@example(lens=[37, 0, MIN_ROWS + 5], hk=2, group=2, d=72, causal=False)
@example(lens=[MIN_ROWS + 32, 33], hk=1, group=1, d=16, causal=True)
@example(lens=[1, MIN_ROWS + 9], hk=1, group=2, d=200, causal=False)
def test_flash_tma_varlen_bitwise_equals_pointer(
    lens: list[int], hk: int, group: int, d: int, causal: bool
) -> None:
    g = torch.Generator().manual_seed(sum(lens) + d)
    t = sum(lens)
    q, k, v = randn(t, hk * group, d, g=g), randn(t, hk, d, g=g), randn(t, hk, d, g=g)
    c = cu(lens)
    results = both_paths(
        lambda: varlen_attention(q, k, v, c, c, causal=causal, return_lse=True), True, k, v
    )
    assert_bitwise(results, f"varlen lens={lens} Hk={hk} G={group} D={d} causal={causal}")


@settings(max_examples=4)
@given(
    b=st.sampled_from([1, 2]),
    hk=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    lq=st.integers(1, 80),
    lk=st.integers(MIN_ROWS, MIN_ROWS + 50),
    d=st.sampled_from(HEAD_DIMS),
    causal=st.booleans(),
    seq_major=st.booleans(),
)
@example(b=2, hk=2, group=1, lq=45, lk=MIN_ROWS + 18, d=72, causal=True, seq_major=False)
@example(b=1, hk=1, group=3, lq=1, lk=MIN_ROWS + 1, d=16, causal=False, seq_major=True)
@example(b=1, hk=2, group=1, lq=70, lk=MIN_ROWS + 31, d=80, causal=False, seq_major=True)
def test_flash_tma_gqa_bitwise_equals_pointer(
    b: int, hk: int, group: int, lq: int, lk: int, d: int, causal: bool, seq_major: bool
) -> None:
    """Dense launches: masked tiles load through TMA too (rows past Lk read 0). seq_major:
    K and V as (B, Lk, Hk, D) memory viewed (B, Hk, Lk, D), strides not in size order."""
    g = torch.Generator().manual_seed(lq * 100 + lk + d)
    q = randn(b, hk * group, lq, d, g=g)
    if seq_major:
        k, v = (randn(b, lk, hk, d, g=g).transpose(1, 2) for _ in range(2))
    else:
        k, v = randn(b, hk, lk, d, g=g), randn(b, hk, lk, d, g=g)
    results = both_paths(
        lambda: gqa_attention(q, k, v, causal=causal, return_lse=True), False, k, v
    )
    what = f"gqa B={b} Hk={hk} G={group} Lq={lq} Lk={lk} D={d} causal={causal} {seq_major=}"
    assert_bitwise(results, what)


@pytest.mark.parametrize("launch", ["autotuner", "pinned-policy", "pinned-config"])
def test_flash_tma_every_launch_path_sets_the_block_shapes(launch: str) -> None:
    """The descriptors' boxes follow the config that runs (a box that does not match the
    kernel's tile fails to reshape): the autotuner's pre-hook, the pinning policy's and a
    pinned FlashConfig with another BLOCK_INNER all give the pointer path's result."""
    g = torch.Generator().manual_seed(5)
    lens = [50, MIN_ROWS]
    q, k, v = (randn(sum(lens), 2, 72, g=g) for _ in range(3))
    c = cu(lens)
    config = FlashConfig(32, 16, 4, 1) if launch == "pinned-config" else None
    policy = "0" if launch == "pinned-policy" else "1"
    with env(_autotune.ENV, policy):
        results = both_paths(
            lambda: varlen_forward(q, k, v, c, c, True, 0.3, config=config), True, k, v, config
        )
    assert_bitwise(results, launch)


def test_flash_tma_next_sequence_nan_stays_out(judge) -> None:
    """A varlen sequence's last, partial tile reads the next sequence's rows through TMA: NaN /
    inf in the K and V rows right after sequence 0 never reach sequence 0's out or lse."""
    g = torch.Generator().manual_seed(9)
    lens = [40, MIN_ROWS]
    q, k, v = (randn(sum(lens), 2, 72, g=g) for _ in range(3))
    k[40], v[40], k[41], v[42] = float("nan"), float("nan"), float("inf"), float("-inf")
    c = cu(lens)
    (out_p, lse_p), (out_t, lse_t) = both_paths(
        lambda: varlen_attention(q, k, v, c, c, return_lse=True), True, k, v
    )
    first = slice(0, 40)
    got = {"out": out_t[first], "lse": lse_t[:, first]}
    assert bool(got["out"].isfinite().all()), "a non-finite K/V row of sequence 1 leaked"
    assert torch.equal(got["out"], out_p[first]) and torch.equal(got["lse"], lse_p[:, first])
    x = (q[first], k[first], v[first], cu([40]), cu([40]))
    ref = dict(zip(("out", "lse"), varlen_oracle(*x, return_lse=True), strict=True))
    base = varlen_oracle(*x, return_lse=True, compute_dtype=q.dtype)
    failures = judge("varlen", got, ref, dict(zip(("out", "lse"), base, strict=True)), q.dtype)
    assert not failures, failures


# ------------------------------------------------------------------ policy


BLOCK = 32  # the largest key block of the launch the policy tests decide for


def _gpu_policy(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """Decide as on a GPU of `arch` (interpreter off, arch override), policy "auto"."""
    monkeypatch.setattr(_flash, "interpreter_active", lambda: False)
    monkeypatch.setenv(ARCH_ENV, arch)
    monkeypatch.delenv(_flash.TMA_ENV, raising=False)


@pytest.mark.parametrize(
    ("arch", "expected"), [("sm90", True), ("sm100", True), ("sm89", False), ("gfx942", False)]
)
def test_flash_tma_auto_policy_follows_the_arch(
    arch: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_policy(monkeypatch, arch)
    k = torch.empty(2, 3, 40, 72, dtype=torch.bfloat16)
    assert _flash._use_tma(k, k, k, False, BLOCK) is expected


def test_flash_tma_auto_policy_is_off_under_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_flash, "interpreter_active", lambda: True)
    monkeypatch.setenv(ARCH_ENV, "sm90")
    monkeypatch.delenv(_flash.TMA_ENV, raising=False)
    k = torch.empty(2, 3, 40, 72, dtype=torch.bfloat16)
    assert not _flash._use_tma(k, k, k, False, BLOCK)
    monkeypatch.setenv(_flash.TMA_ENV, "0")
    monkeypatch.setattr(_flash, "interpreter_active", lambda: False)
    assert not _flash._use_tma(k, k, k, False, BLOCK), '"0" turns TMA off on a TMA-capable arch'


def _layouts() -> dict[str, tuple[torch.Tensor, bool, bool]]:
    """name -> (K, is_varlen, TMA-legal)."""
    bf16 = torch.bfloat16
    flat = torch.empty(2 * 3 * 40 * 72 + 4, dtype=bf16)
    return {
        "contiguous": (torch.empty(2, 3, 40, 72, dtype=bf16), False, True),
        "seq-major": (torch.empty(2, 40, 3, 72, dtype=bf16).transpose(1, 2), False, True),
        "padded-rows": (torch.empty(2, 3, 40, 88, dtype=bf16)[..., :72], False, True),
        "row-not-16-bytes": (torch.empty(2, 3, 40, 76, dtype=bf16)[..., :72], False, False),
        "base-not-16-bytes": (flat[4:].view(2, 3, 40, 72), False, False),
        "d-strided": (torch.empty(2, 3, 72, 40, dtype=bf16).transpose(-1, -2), False, False),
        "float32": (torch.empty(2, 3, 40, 72), False, False),
        "rows-below-block": (torch.empty(2, 3, BLOCK - 1, 72, dtype=bf16), False, False),
        "rows-at-block": (torch.empty(2, 3, BLOCK, 72, dtype=bf16), False, True),
        "d-below-lane-tile": (torch.empty(2, 3, 40, 8, dtype=bf16), False, False),
        "varlen-packed": (torch.empty(120, 3, 72, dtype=bf16), True, True),
        "varlen-head-major": (torch.empty(3, 120, 72, dtype=bf16).transpose(0, 1), True, True),
        "varlen-empty": (torch.empty(0, 3, 72, dtype=bf16), True, False),
        "varlen-rows-below-block": (torch.empty(BLOCK - 1, 3, 72, dtype=bf16), True, False),
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_flash_tma_only_for_legal_layouts(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """TMA needs float16 / bfloat16, D unit-stride, every other stride a positive multiple of
    16 bytes, a 16-byte aligned base, and boxes inside the tensor (rows >= the largest key
    block, D >= the lane tile D0); anything else keeps pointer loads."""
    _gpu_policy(monkeypatch, "sm90")
    k, is_varlen, legal = _layouts()[name]
    assert _flash._use_tma(k, k, k, is_varlen, BLOCK) is legal


def test_flash_tma_varlen_view_is_one_batch_of_packed_rows() -> None:
    k = torch.empty(3, 120, 72, dtype=torch.bfloat16).transpose(0, 1)  # (T, Hk, D), head-major
    shape, strides = _flash._tma_view(k, True, BLOCK)
    assert shape == [1, 3, 120, 72]
    assert strides == [120 * 72, 120 * 72, 72, 1]


def test_flash_tma_bad_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_flash.TMA_ENV, "yes")
    with pytest.raises(ValueError, match=r"\$ATTNVERIFY_FLASH_TMA must be one of auto, 0, 1"):
        _flash.tma_policy()


# ------------------------------------------------------------------ sm90 lowering


def compile_sm90_ptx(d: int, is_varlen: bool, tma: bool) -> str:
    """PTX of the forward as `flash_forward` launches it (bf16, non-causal, pinned to the first
    FWD config, loads per `tma`), compiled for sm90 with Triton's binder. Needs a process
    without TRITON_INTERPRET (JIT functions)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import create_function_from_signature

    recorded: dict = {}

    class Recorder:
        fn = None

        def __getitem__(self, grid: tuple):
            return lambda **kwargs: recorded.update(kwargs)

    rec, real = Recorder(), _flash._fwd
    rec.fn = rec
    lens = (100, 156)
    if is_varlen:
        q = torch.randn(sum(lens), 2, d, dtype=torch.bfloat16)
        layout = _flash.VarlenLengths.from_seqlens(lens, lens)
        problem = _flash.FlashProblem(True, 1, 2, 2, False, 0.1, lengths=lambda: layout)
    else:
        q = torch.randn(1, 2, 256, d, dtype=torch.bfloat16)
        problem = _flash.FlashProblem(False, 1, 2, 2, False, 0.1, seqlen_q=256, seqlen_k=256)
    block, warps, stages = _flash.FWD_CONFIGS[0]
    _flash._fwd = rec
    try:
        with env(_flash.TMA_ENV, "1" if tma else "0"):
            _flash.flash_forward(q, q, q, problem, config=FlashConfig(128, block, warps, stages))
    finally:
        _flash._fwd = real
    kernel, target = real.fn, GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, opts = binder(**recorded)
    options, signature, constexprs, attrs = kernel._pack_args(backend, recorded, bound, spec, opts)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return compile(src, target=target, options=options.__dict__).asm["ptx"]


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU compiles the kernel in other tests")
def test_flash_tma_forward_compiles_for_sm90() -> None:
    """The interpreter cannot catch what only the compiler rejects (descriptor block shapes,
    TMA lowering): D = 72 dense and D = 80 varlen compile for sm90 with TMA copies
    (cp.async.bulk.tensor) and no pointer copies (cp.async.cg) of K and V, full and masked
    tiles alike."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    code = (
        "import test_flash_tma as t\n"
        "for d, vl in ((72, False), (80, True)):\n"
        "    ptx = t.compile_sm90_ptx(d, vl, True)\n"
        "    print(d, vl, 'cp.async.bulk.tensor' in ptx, 'cp.async.cg' in ptx)\n"
    )
    lines = run_jit_process(code).split("\n")
    assert "72 False True False" in lines, lines
    assert "80 True True False" in lines, lines
