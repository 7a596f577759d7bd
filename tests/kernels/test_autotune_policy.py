"""The autotune policy: all configs, the first, or one per key by a stable hash that covers
every config over many keys."""

from __future__ import annotations

import pytest
import torch
import triton
from triton.runtime.errors import OutOfResources

from attnverify.kernels import _autotune, _flash
from attnverify.kernels._flash_tiles import _prune


def test_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = ["a", "b", "c", "d"]
    monkeypatch.delenv(_autotune.ENV, raising=False)
    assert _autotune.select(configs, (64, True)) == configs
    monkeypatch.setenv(_autotune.ENV, "0")
    assert _autotune.select(configs, (64, True)) == ["a"]
    monkeypatch.setenv(_autotune.ENV, "rotate")
    picks = {tuple(_autotune.select(configs, (d, c))) for d in range(8, 257, 8) for c in (0, 1)}
    assert all(len(p) == 1 for p in picks)
    assert {p[0] for p in picks} == set(configs), "rotation over 64 keys misses a config"
    assert _autotune.select(configs, (72, 1)) == _autotune.select(configs, (72, 1))
    assert _autotune.select(["only"], (72, 1)) == ["only"]


def test_pinned_order_tries_the_pick_first_then_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = ["a", "b", "c", "d"]
    monkeypatch.setenv(_autotune.ENV, "1")
    assert _autotune.pinned_order(configs, (64,)) is None
    monkeypatch.setenv(_autotune.ENV, "0")
    assert _autotune.pinned_order(configs, (64,)) == configs
    monkeypatch.setenv(_autotune.ENV, "rotate")
    for key in [(d,) for d in range(8, 257, 8)]:
        order = _autotune.pinned_order(configs, key)
        assert order[0] == _autotune.select(configs, key)[0]
        assert sorted(order) == configs
        start = configs.index(order[0])
        assert order == configs[start:] + configs[:start]


class _FakeJit:
    """A jit function whose launches with BLOCK_INNER in `too_big` raise OutOfResources."""

    __name__ = "fake_flash_kernel"

    def __init__(self, too_big: set[int]) -> None:
        self.too_big, self.launched, self.tried = too_big, [], []

    def __getitem__(self, grid: tuple[int, int, int]):
        def run(**kwargs: object) -> None:
            self.tried.append(kwargs["BLOCK_INNER"])
            if kwargs["BLOCK_INNER"] in self.too_big:
                raise OutOfResources(300 * 1024, 227 * 1024, "shared memory")
            self.launched.append((kwargs["BLOCK_INNER"], kwargs["num_warps"]))

        return run


class _FakeAutotuned:
    """An autotuned kernel over `fn`; autotuning raises OutOfResources when every config is
    too big for `fn` (Triton's autotuner then keeps one that does not fit), else launches the
    first config that fits."""

    def __init__(self, fn: _FakeJit, configs: list[triton.Config]) -> None:
        self.fn, self.configs, self.keys = fn, configs, ["HEAD_DIM", "HAS_BIAS"]
        self.early_config_prune = _prune  # the flash passes' pruning
        self.tuned = 0

    def __getitem__(self, grid: tuple[int, int, int]):
        def run(**kwargs: object) -> None:
            self.tuned += 1
            fits = [c for c in self.configs if c.kwargs["BLOCK_INNER"] not in self.fn.too_big]
            if not fits:
                raise OutOfResources(300 * 1024, 227 * 1024, "shared memory")
            c = fits[0]
            self.fn[grid](**kwargs, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)

        return run


CONFIGS = [
    triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=2)
    for b, w in ((128, 8), (64, 4), (48, 4), (40, 4))
]
Q = torch.empty(1, 1, 1, 128, dtype=torch.float16)
ARGS = dict(Q=Q, HEAD_D0=128, HEAD_D1=0, HAS_D1=False, HEAD_DIM=128, HAS_BIAS=True)
KEY = ("fake_flash_kernel", Q.dtype, 128, True)


@pytest.mark.parametrize("policy", ["0", "rotate"])
def test_flash_pinned_launch_falls_through_to_a_config_that_fits(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """The first config `_prune` keeps can still exceed the device's shared memory (mask, bias
    and resident tiles are counted only by the compiler): a pinning policy launches the next
    one, and remembers it for the key."""
    monkeypatch.setenv(_autotune.ENV, policy)
    monkeypatch.setattr(_flash, "_PINNED_FITS", {})
    order = _autotune.pinned_order(CONFIGS, KEY)
    fn = _FakeJit({order[0].kwargs["BLOCK_INNER"], order[1].kwargs["BLOCK_INNER"]})
    kernel = _FakeAutotuned(fn, CONFIGS)
    _flash._launch(kernel, (1, 1, 1), None, **ARGS)
    _flash._launch(kernel, (1, 1, 1), None, **ARGS)
    expected = (order[2].kwargs["BLOCK_INNER"], order[2].num_warps)
    assert fn.launched == [expected, expected] and kernel.tuned == 0
    assert dict(_flash._PINNED_FITS) == {KEY: 2}
    # none of the kernel's configs fits: the fallbacks, smallest last
    monkeypatch.setattr(_flash, "_PINNED_FITS", {})
    fn.too_big = {c.kwargs["BLOCK_INNER"] for c in CONFIGS} | {32}
    _flash._launch(kernel, (1, 1, 1), None, **ARGS)
    assert fn.launched[-1] == (16, 4) and _flash._PINNED_FITS[KEY] == len(CONFIGS) + 2
    fn.too_big |= {16}
    monkeypatch.setattr(_flash, "_PINNED_FITS", {})
    with pytest.raises(OutOfResources):
        _flash._launch(kernel, (1, 1, 1), None, **ARGS)


def test_flash_autotuned_launch_falls_back_when_no_config_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Autotuning whose every config is too big for the device (another compiler, a GPU with
    less shared memory) launches the first fallback config that fits, and later calls of the
    key go straight to it; a key whose configs fit is autotuned as before."""
    monkeypatch.setenv(_autotune.ENV, "1")
    monkeypatch.setattr(_flash, "_PINNED_FITS", {})
    monkeypatch.setattr(_flash, "_TUNED_OUT", {})
    fn = _FakeJit({c.kwargs["BLOCK_INNER"] for c in CONFIGS})
    kernel = _FakeAutotuned(fn, CONFIGS)
    _flash._launch(kernel, (1, 1, 1), None, **ARGS)
    _flash._launch(kernel, (1, 1, 1), None, **ARGS)
    assert fn.launched == [(32, 4), (32, 4)] and kernel.tuned == 1
    assert fn.tried == [32, 32], "the configs autotuning found too big were tried again"
    assert dict(_flash._TUNED_OUT) == {KEY: len(CONFIGS)} and not _flash._PINNED_FITS
    fits = _FakeJit({128})
    kernel = _FakeAutotuned(fits, CONFIGS)
    _flash._launch(kernel, (1, 1, 1), None, **{**ARGS, "HEAD_DIM": 64})
    assert fits.launched == [(64, 4)] and kernel.tuned == 1
    # a key launched under a pinning policy first is still autotuned under "1"
    monkeypatch.setenv(_autotune.ENV, "0")
    _flash._launch(kernel, (1, 1, 1), None, **{**ARGS, "HEAD_DIM": 32})
    monkeypatch.setenv(_autotune.ENV, "1")
    _flash._launch(kernel, (1, 1, 1), None, **{**ARGS, "HEAD_DIM": 32})
    assert kernel.tuned == 2


def test_flash_launch_without_fallback_leaves_out_of_resources_to_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`fallback=False` (the masked forward's first try, before its unpipelined retry): no
    fallback config is launched, pinned or autotuned."""
    for policy in ("1", "0"):
        monkeypatch.setenv(_autotune.ENV, policy)
        monkeypatch.setattr(_flash, "_PINNED_FITS", {})
        monkeypatch.setattr(_flash, "_TUNED_OUT", {})
        fn = _FakeJit({c.kwargs["BLOCK_INNER"] for c in CONFIGS})
        with pytest.raises(OutOfResources):
            _flash._launch(_FakeAutotuned(fn, CONFIGS), (1, 1, 1), None, fallback=False, **ARGS)
        assert 32 not in fn.tried and 16 not in fn.tried, (policy, fn.tried)


def test_bad_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_autotune.ENV, "fast")
    with pytest.raises(ValueError, match=r"\$ATTNVERIFY_AUTOTUNE must be one of 1, 0, rotate"):
        _autotune.select(["a", "b"], ())


def test_flash_kernels_tune_per_length_class() -> None:
    """Every flash-core kernel keys its tuning on the longest sequence's length class, so a
    config tuned on a short call is not reused for a long one; the launches carry it (dense:
    max(Lq, Lk); varlen: the longest sequence), the passes of one call the same class."""
    from attnverify.kernels._flash_offline import record_launches

    for kernel in (_flash._fwd, _flash._dkdv, _flash._dq, _flash._dbias):
        assert "len_bucket" in kernel.keys, kernel.fn.__name__
    assert [_flash._len_bucket(n) for n in (0, 1, 100, 1024, 1025, 8192, 10**6)] == [
        1, 1, 7, 11, 11, 14, 15,
    ]  # fmt: skip

    def buckets(lq: int, lk: int) -> set[int]:
        problem = _flash.FlashProblem(False, 1, 2, 1, False, 0.1, seqlen_q=lq, seqlen_k=lk)
        q, k = torch.randn(1, 2, lq, 16), torch.randn(1, 1, lk, 16)
        bias = torch.randn(1, 1, lq, lk)
        lse = torch.zeros(1, 2, lq)

        def call() -> None:
            _flash.flash_forward(q, k, k, problem, bias=bias)
            _flash.flash_backward(q, q, k, k, q, lse, None, problem, bias=bias, need_dbias=True)

        launches = record_launches(call)
        assert len(launches) == 4  # forward, dk/dv, dq, summed dbias
        return {launch.kwargs["len_bucket"] for launch in launches}

    assert buckets(40, 300) == {9}
    assert buckets(3000, 20) == {12}

    lens = (5, 700, 64)
    layout = _flash.VarlenLengths.from_seqlens(lens, lens)
    problem = _flash.FlashProblem(True, 1, 2, 2, False, 0.1, lengths=lambda: layout)
    q = torch.randn(sum(lens), 2, 16)
    launches = record_launches(lambda: _flash.flash_forward(q, q, q, problem))
    assert [launch.kwargs["len_bucket"] for launch in launches] == [10]
