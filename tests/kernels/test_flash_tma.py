"""TMA-descriptor loads of the flash forward and backward (`_flash`, issues #5 / #6).

The forward loads K and V, the backward its inner-loop tiles (Q and dO in the dk/dv pass, K and
V in the dq pass), through TMA descriptors or pointers (`_flash_tma.tma_policy`,
`$ATTNVERIFY_FLASH_TMA`); both paths compute the same values, so out, lse, dq, dk, dv and dbias
must be bitwise equal. On the CPU the interpreter runs the descriptor loads (forced with "1");
the sm90 lowering is checked by compiling in a JIT-mode process. Properties: bitwise agreement
(varlen and gqa, every launch path: autotuner, pinned policy, pinned config), non-finite rows
of the next sequence never reach a varlen sequence's output or gradients, and the policy picks
TMA only where it may.
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
from attnverify.kernels import _autotune, _flash, _flash_tma
from attnverify.kernels._flash import FlashConfig
from attnverify.kernels._flash_dbias import _dbias
from attnverify.kernels._flash_offline import compile_inputs, compile_sm90, record_launches
from attnverify.kernels.gqa import gqa_attention
from attnverify.kernels.varlen import varlen_attention, varlen_backward, varlen_forward
from attnverify.reference.varlen import varlen_attention as varlen_oracle

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEAD_DIMS = (16, 72, 80, 200)  # one lane tile, 64 + 16, 64 + 16, 128 + 128
# TMA boxes stay inside the tensor: K/V need at least the largest key block of rows
MIN_ROWS = _flash_tma._largest_key_block(None)
# the backward's: Q / dO (dk/dv pass) and K / V (dq pass) need its largest inner block of rows
MIN_BWD_ROWS = _flash_tma.BWD_LARGEST_INNER_BLOCK
BWD_HEAD_DIMS = (16, 72, 80)


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
    block = _flash_tma._largest_key_block(config)
    with env(_flash.TMA_ENV, "1"):
        assert _flash_tma._use_tma(k, k, v, is_varlen, block), "test inputs must be TMA-legal"
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
    """A varlen descriptor spans every packed row, so a TMA box over sequence 0's last,
    partial tile would reach the next one's rows: NaN / inf in the K and V rows right after
    sequence 0 never reach sequence 0's out or lse (masked tiles load through pointers,
    `_flash_tiles._pair_tiles`)."""
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


# ------------------------------------------------------------------ backward


GRADS = ("dq", "dk", "dv", "dbias")


def grads(fn, inputs: dict[str, torch.Tensor], do: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of <fn(**inputs), do> w.r.t. every floating input (q, k, v, and bias where
    given), named d<input>."""
    names = [n for n, x in inputs.items() if x is not None and x.is_floating_point()]
    leaves = {n: x.detach().requires_grad_() if n in names else x for n, x in inputs.items()}
    out = fn(**leaves)
    got = torch.autograd.grad(out, [leaves[n] for n in names], do.to(out.dtype))
    return {f"d{n}": g for n, g in zip(names, got, strict=True)}


def both_backward_paths(
    call, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, is_varlen: bool
) -> list[dict[str, torch.Tensor]]:
    """[gradients with pointer loads, gradients with TMA loads]; asserts both backward passes
    really take TMA (the layout is TMA-legal)."""
    with env(_flash.TMA_ENV, "1"):
        for x, y, names in ((q, do, _flash.QDO_DESC_NAMES), (k, v, _flash.KV_DESC_NAMES)):
            taken, _ = _flash_tma._bwd_descriptors(x, y, q, names, is_varlen, None)
            assert taken, "test inputs must be TMA-legal"
    results = []
    for mode in ("0", "1"):
        with env(_flash.TMA_ENV, mode):
            results.append(call())
    return results


def assert_grads_bitwise(results: list[dict[str, torch.Tensor]], what: str) -> None:
    pointer, tma = results
    assert pointer.keys() == tma.keys()
    for name in pointer:
        a, b = pointer[name], tma[name]
        diff = (a.float() - b.float()).abs().nan_to_num(float("inf")).max().item()
        assert torch.equal(a, b), f"{what}: {name} differs, max |TMA - pointer| = {diff}"


def _with_long_bwd(short: list[int], long: int) -> list[int]:
    """`short` with a sequence of `long` tokens after its first one (Q/K reach MIN_BWD_ROWS)."""
    return [*short[:1], long, *short[1:]]


@settings(max_examples=3, deadline=None)
@given(
    lens=st.builds(
        _with_long_bwd,
        st.lists(st.integers(0, 50), max_size=2),
        st.integers(MIN_BWD_ROWS, MIN_BWD_ROWS + 40),
    ),
    hk=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    d=st.sampled_from(BWD_HEAD_DIMS),
    causal=st.booleans(),
)
@example(lens=[37, 0, MIN_BWD_ROWS + 5], hk=1, group=2, d=72, causal=False)
@example(lens=[MIN_BWD_ROWS + 13, 19], hk=2, group=1, d=16, causal=True)
@example(lens=[0, MIN_BWD_ROWS + 9, 3], hk=1, group=1, d=80, causal=False)
def test_flash_tma_backward_varlen_bitwise_equals_pointer(
    lens: list[int], hk: int, group: int, d: int, causal: bool
) -> None:
    """dq, dk, dv through the public function (autotuner), zero-length sequences included."""
    g = torch.Generator().manual_seed(sum(lens) * 3 + d)
    t = sum(lens)
    x = {"q": randn(t, hk * group, d, g=g), "k": randn(t, hk, d, g=g), "v": randn(t, hk, d, g=g)}
    do, c = randn(t, hk * group, d, g=g), cu(lens)

    def fn(q, k, v):
        return varlen_attention(q, k, v, c, c, causal=causal)

    results = both_backward_paths(lambda: grads(fn, x, do), x["q"], x["k"], x["v"], do, True)
    assert_grads_bitwise(results, f"varlen lens={lens} Hk={hk} G={group} D={d} {causal=}")


@settings(max_examples=3, deadline=None)
@given(
    hk=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    lq=st.integers(MIN_BWD_ROWS, MIN_BWD_ROWS + 40),
    lk=st.integers(MIN_BWD_ROWS, MIN_BWD_ROWS + 40),
    d=st.sampled_from(BWD_HEAD_DIMS),
    causal=st.booleans(),
    with_mask=st.booleans(),
    bias_shape=st.sampled_from(["none", "full", "shared", "row", "col"]),
)
@example(hk=2, group=2, lq=MIN_BWD_ROWS + 7, lk=MIN_BWD_ROWS + 21, d=72, causal=True,
         with_mask=True, bias_shape="full")  # fmt: skip
@example(hk=1, group=2, lq=MIN_BWD_ROWS + 30, lk=MIN_BWD_ROWS + 3, d=80, causal=False,
         with_mask=True, bias_shape="row")  # fmt: skip
@example(hk=1, group=1, lq=MIN_BWD_ROWS, lk=MIN_BWD_ROWS + 33, d=16, causal=False,
         with_mask=False, bias_shape="col")  # fmt: skip
@example(hk=2, group=1, lq=MIN_BWD_ROWS + 11, lk=MIN_BWD_ROWS + 2, d=80, causal=True,
         with_mask=True, bias_shape="shared")  # fmt: skip
def test_flash_tma_backward_gqa_bitwise_equals_pointer(
    hk: int, group: int, lq: int, lk: int, d: int, causal: bool, with_mask: bool,
    bias_shape: str,
) -> None:  # fmt: skip
    """Dense launches with mask and bias: dq, dk, dv and dbias (rows past Lq / Lk read 0
    from the descriptors, as from the pointer loads). bias_shape: (B, Hk, Lq, Lk) full,
    (1, 1, Lq, Lk) shared by every (batch, head) pair (the summed dbias kernel, as is full
    with G = 2), or broadcast over keys (row) or over queries (col)."""
    g = torch.Generator().manual_seed(lq * 100 + lk + d)
    b, hq = 2, hk * group
    x = {
        "q": randn(b, hq, lq, d, g=g),
        "k": randn(b, hk, lk, d, g=g),
        "v": randn(b, hk, lk, d, g=g),
    }
    do = randn(b, hq, lq, d, g=g)
    mask = None
    if with_mask:
        mask = (torch.rand(b, 1, lq, lk, generator=g) < 0.8).to(DEVICE)
        mask[..., :, 0] = True  # every row keeps a key
    shapes = {
        "full": (b, hk, lq, lk),
        "shared": (1, 1, lq, lk),
        "row": (1, hq, lq, 1),
        "col": (b, 1, 1, lk),
    }
    x["bias"] = randn(*shapes[bias_shape], g=g) if bias_shape != "none" else None

    def fn(q, k, v, bias):
        return gqa_attention(q, k, v, mask=mask, bias=bias, causal=causal)

    results = both_backward_paths(lambda: grads(fn, x, do), x["q"], x["k"], x["v"], do, False)
    what = f"gqa Hk={hk} G={group} Lq={lq} Lk={lk} D={d} {causal=} {with_mask=} {bias_shape=}"
    assert_grads_bitwise(results, what)


@pytest.mark.parametrize("launch", ["autotuner", "pinned-policy", "pinned-config"])
def test_flash_tma_backward_every_launch_path_sets_the_block_shapes(launch: str) -> None:
    """Both passes' boxes follow the config that runs (autotuner pre-hooks, the pinning
    policy's, pinned FlashConfigs whose inner blocks differ from each other and from the
    configs'): the pointer path's dq, dk, dv."""
    g = torch.Generator().manual_seed(6)
    lens = [27, MIN_BWD_ROWS + 4]
    q, k, v, out, do = (randn(sum(lens), 2, 80, g=g) for _ in range(5))
    c = cu(lens)
    lse = varlen_forward(q, k, v, c, c, False, 0.3)[1]
    pinned = {}
    if launch == "pinned-config":
        pinned = {"config_dkdv": FlashConfig(32, 16, 4, 1), "config_dq": FlashConfig(16, 32, 4, 1)}

    def call() -> dict[str, torch.Tensor]:
        got = varlen_backward(do, None, q, k, v, out, lse, c, c, False, 0.3, **pinned)
        return dict(zip(("dq", "dk", "dv"), got, strict=True))

    with env(_autotune.ENV, "0" if launch == "pinned-policy" else "1"):
        results = both_backward_paths(call, q, k, v, do, True)
    assert_grads_bitwise(results, launch)


def test_flash_tma_backward_passes_decide_alone() -> None:
    """Each pass takes TMA where its own operands allow: Lq below the inner block keeps the
    dk/dv pass on pointer loads of Q and dO while the dq pass loads K and V through TMA;
    gradients as with pointer loads throughout."""
    g = torch.Generator().manual_seed(12)
    lq, lk = MIN_BWD_ROWS - 5, MIN_BWD_ROWS + 3
    x = {
        "q": randn(1, 2, lq, 72, g=g),
        "k": randn(1, 1, lk, 72, g=g),
        "v": randn(1, 1, lk, 72, g=g),
    }
    do = randn(1, 2, lq, 72, g=g)
    with env(_flash.TMA_ENV, "1"):
        passes = [
            _flash_tma._bwd_descriptors(a, b, x["q"], names, False, None)
            for a, b, names in (
                (x["q"], do, _flash.QDO_DESC_NAMES),
                (x["k"], x["v"], _flash.KV_DESC_NAMES),
            )
        ]
    assert [taken for taken, _ in passes] == [False, True]
    assert all(d is None for d in passes[0][1].values()), "pointer loads pass no descriptors"
    results = []
    for mode in ("0", "1"):
        with env(_flash.TMA_ENV, mode):
            results.append(grads(lambda q, k, v: gqa_attention(q, k, v, causal=True), x, do))
    assert_grads_bitwise(results, f"gqa Lq={lq} Lk={lk}")


def test_flash_tma_backward_next_sequence_nan_stays_out(judge) -> None:
    """A TMA box over a varlen sequence's last, partial tile would reach the next sequence's
    rows: NaN / inf in the Q, dO (dk/dv pass) and K, V (dq pass) rows right after sequence 0
    never reach sequence 0's dq, dk or dv, which match the pointer path and the oracle."""
    g = torch.Generator().manual_seed(10)
    lens, n = [40, MIN_BWD_ROWS], 40
    q, k, v, do = (randn(sum(lens), 2, 72, g=g) for _ in range(4))
    c = cu(lens)
    out, lse = varlen_forward(q, k, v, c, c, False, 72**-0.5)
    for x in (q, k, v, do):
        x[n], x[n + 1], x[n + 2] = float("nan"), float("inf"), float("-inf")

    def call() -> dict[str, torch.Tensor]:
        got = varlen_backward(do, None, q, k, v, out, lse, c, c, False, 72**-0.5)
        return {name: x[:n] for name, x in zip(("dq", "dk", "dv"), got, strict=True)}

    pointer, tma = both_backward_paths(call, q, k, v, do, True)
    for name, x in tma.items():
        assert bool(x.isfinite().all()), f"a non-finite row of sequence 1 leaked into {name}"
    assert_grads_bitwise([pointer, tma], "NaN after sequence 0")
    first = {"q": q[:n], "k": k[:n], "v": v[:n]}

    def oracle(**kw: object) -> dict[str, torch.Tensor]:
        return grads(lambda q, k, v: varlen_oracle(q, k, v, cu([n]), cu([n]), **kw), first, do[:n])

    failures = judge("varlen", tma, oracle(), oracle(compute_dtype=q.dtype), q.dtype)
    assert not failures, failures


# ------------------------------------------------------------------ policy


BLOCK = 32  # the largest key block of the launch the policy tests decide for


def _gpu_policy(monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """Decide as on a GPU of `arch` (interpreter off, arch override), policy "auto"."""
    monkeypatch.setattr(_flash_tma, "interpreter_active", lambda: False)
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
    assert _flash_tma._use_tma(k, k, k, False, BLOCK) is expected


@pytest.mark.parametrize("with_bias", [False, True])
def test_flash_tma_auto_backward_takes_tma_with_or_without_a_bias(
    with_bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an sm90 under "auto", the backward of a gqa call launches both passes with TMA, a
    bias or not (the summed dbias kernel that a bias shared by both heads adds loads through
    pointers); kernels stood in, Lq = Lk = the passes' largest inner block."""
    _gpu_policy(monkeypatch, "sm90")
    launched: dict[str, bool] = {}

    def record(kernel, grid, config, **kw) -> None:
        if kernel is not _dbias:
            launched[kernel.fn.__name__] = kw["USE_TMA"]

    monkeypatch.setattr(_flash, "_launch", record)
    monkeypatch.setattr(_flash, "_tile_codes", lambda *a: None)
    n = MIN_BWD_ROWS
    q = torch.randn(1, 2, n, 72, dtype=torch.bfloat16)
    bias = torch.randn(1, 1, n, n, dtype=torch.bfloat16) if with_bias else None
    problem = _flash.FlashProblem(False, 1, 2, 2, False, 0.1, seqlen_q=n, seqlen_k=n)
    lse = torch.zeros(1, 2, n)
    _flash.flash_backward(q, q, q, q, q, lse, None, problem, bias=bias, need_dbias=with_bias)
    assert launched == {"_flash_bwd_dkdv_kernel": True, "_flash_bwd_dq_kernel": True}, launched


def test_flash_tma_auto_policy_is_off_under_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_flash_tma, "interpreter_active", lambda: True)
    monkeypatch.setenv(ARCH_ENV, "sm90")
    monkeypatch.delenv(_flash.TMA_ENV, raising=False)
    k = torch.empty(2, 3, 40, 72, dtype=torch.bfloat16)
    assert not _flash_tma._use_tma(k, k, k, False, BLOCK)
    monkeypatch.setenv(_flash.TMA_ENV, "0")
    monkeypatch.setattr(_flash_tma, "interpreter_active", lambda: False)
    assert not _flash_tma._use_tma(k, k, k, False, BLOCK), '"0" turns TMA off on a TMA-capable arch'


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
    assert _flash_tma._use_tma(k, k, k, is_varlen, BLOCK) is legal


def test_flash_tma_varlen_view_is_one_batch_of_packed_rows() -> None:
    k = torch.empty(3, 120, 72, dtype=torch.bfloat16).transpose(0, 1)  # (T, Hk, D), head-major
    shape, strides = _flash_tma._tma_view(k, True, BLOCK)
    assert shape == [1, 3, 120, 72]
    assert strides == [120 * 72, 120 * 72, 72, 1]


def test_flash_tma_bad_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_flash.TMA_ENV, "yes")
    with pytest.raises(ValueError, match=r"\$ATTNVERIFY_FLASH_TMA must be one of auto, 0, 1"):
        _flash.tma_policy()


# ------------------------------------------------------------------ sm90 lowering


def compile_sm90_ptx(d: int, is_varlen: bool, tma: bool) -> str:
    """PTX of the forward as `flash_forward` launches it (bf16, non-causal, pinned to the first
    FWD config, loads per `tma`), compiled for sm90. Needs a process without TRITON_INTERPRET
    (JIT functions)."""
    q, problem, _ = compile_inputs(d, is_varlen)
    config = FlashConfig(128, *_flash.FWD_CONFIGS[0])
    with env(_flash.TMA_ENV, "1" if tma else "0"):
        (launch,) = record_launches(lambda: _flash.flash_forward(q, q, q, problem, config=config))
    return compile_sm90(launch).asm["ptx"]


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU compiles the kernel in other tests")
def test_flash_tma_forward_compiles_for_sm90() -> None:
    """The interpreter cannot catch what only the compiler rejects (descriptor block shapes,
    TMA lowering): D = 72 dense and D = 80 varlen compile for sm90 with TMA copies
    (cp.async.bulk.tensor) of K and V and no pipelined pointer copies (cp.async.cg): dense
    masked tiles load through TMA too, varlen ones through unpipelined pointer loads
    (`_flash_tiles._pair_tiles`)."""
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


def compile_sm90_backward_ptx(d: int, is_varlen: bool, tma: bool) -> dict[str, str]:
    """PTX of both backward passes ("dkdv", "dq") as `flash_backward` launches them (bf16,
    non-causal, pinned to the first BWD config, loads per `tma`), compiled for sm90. Needs a
    process without TRITON_INTERPRET (JIT functions)."""
    q, problem, lse = compile_inputs(d, is_varlen)
    config = FlashConfig(128, *_flash.BWD_CONFIGS[0])
    with env(_flash.TMA_ENV, "1" if tma else "0"):
        passes = record_launches(lambda: _flash.flash_backward(
            q, q, q, q, q, lse, None, problem, config_dkdv=config, config_dq=config,
        ))  # fmt: skip
    return {
        name: compile_sm90(launch).asm["ptx"]
        for name, launch in zip(("dkdv", "dq"), passes, strict=True)
    }


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU compiles the kernel in other tests")
def test_flash_tma_backward_compiles_for_sm90() -> None:
    """Both backward passes, D = 72 dense and D = 80 varlen, compile for sm90 with TMA copies
    (cp.async.bulk.tensor) of their inner-loop tiles and no pipelined pointer copies
    (cp.async.cg): dense masked tiles load through TMA too, varlen ones through unpipelined
    pointer loads (`_flash_tiles._pair_tiles`); with TMA off, pointer copies and no TMA."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    code = (
        "import test_flash_tma as t\n"
        "for d, vl in ((72, False), (80, True)):\n"
        "    for tma in (True, False):\n"
        "        for name, ptx in t.compile_sm90_backward_ptx(d, vl, tma).items():\n"
        "            print(name, d, vl, tma, 'cp.async.bulk.tensor' in ptx, 'cp.async.cg' in ptx)\n"
    )
    lines = run_jit_process(code).split("\n")
    for name in ("dkdv", "dq"):
        assert f"{name} 72 False True True False" in lines, lines
        assert f"{name} 80 True True True False" in lines, lines
        assert f"{name} 72 False False False True" in lines, lines
        assert f"{name} 80 True False False True" in lines, lines
