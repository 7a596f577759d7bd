"""The autotune policy: all configs, the first, or one per key by a stable hash that covers
every config over many keys."""

from __future__ import annotations

import pytest
import torch
import triton
from triton.runtime.errors import OutOfResources

from attnverify.kernels import _autotune, _flash


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
        self.too_big, self.launched = too_big, []

    def __getitem__(self, grid: tuple[int, int, int]):
        def run(**kwargs: object) -> None:
            if kwargs["BLOCK_INNER"] in self.too_big:
                raise OutOfResources(300 * 1024, 227 * 1024, "shared memory")
            self.launched.append((kwargs["BLOCK_INNER"], kwargs["num_warps"]))

        return run


class _FakeAutotuned:
    def __init__(self, fn: _FakeJit, configs: list[triton.Config]) -> None:
        self.fn, self.configs, self.keys = fn, configs, ["HEAD_DIM", "HAS_BIAS"]

    def __getitem__(self, grid: tuple[int, int, int]):
        raise AssertionError("a pinning policy must not autotune")


@pytest.mark.parametrize("policy", ["0", "rotate"])
def test_flash_pinned_launch_falls_through_to_a_config_that_fits(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """The first config `_prune` keeps can still exceed the device's shared memory (mask, bias
    and resident tiles are counted only by the compiler): a pinning policy launches the next
    one, and remembers it for the key."""
    monkeypatch.setenv(_autotune.ENV, policy)
    monkeypatch.setattr(_flash, "_PINNED_FITS", {})
    configs = [
        triton.Config({"BLOCK_INNER": b}, num_warps=w, num_stages=2)
        for b, w in ((128, 8), (64, 4), (32, 4), (16, 4))
    ]
    q = torch.empty(1, 1, 1, 128, dtype=torch.float16)
    args = dict(Q=q, HEAD_D0=128, HEAD_D1=0, HAS_D1=False, HEAD_DIM=128, HAS_BIAS=True)
    key = ("fake_flash_kernel", q.dtype, 128, True)
    order = _autotune.pinned_order(configs, key)
    too_big = {order[0].kwargs["BLOCK_INNER"], order[1].kwargs["BLOCK_INNER"]}
    fn = _FakeJit(too_big)
    kernel = _FakeAutotuned(fn, configs)
    _flash._launch(kernel, (1, 1, 1), None, **args)
    _flash._launch(kernel, (1, 1, 1), None, **args)
    expected = (order[2].kwargs["BLOCK_INNER"], order[2].num_warps)
    assert fn.launched == [expected, expected]
    assert dict(_flash._PINNED_FITS) == {key: 2}
    fn.too_big = {c.kwargs["BLOCK_INNER"] for c in configs}
    with pytest.raises(OutOfResources):
        _flash._launch(kernel, (1, 1, 1), None, **args)


def test_bad_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_autotune.ENV, "fast")
    with pytest.raises(ValueError, match=r"\$ATTNVERIFY_AUTOTUNE must be one of 1, 0, rotate"):
        _autotune.select(["a", "b"], ())
