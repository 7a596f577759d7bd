"""The autotune policy: all configs, the first, or one per key by a stable hash that covers
every config over many keys."""

from __future__ import annotations

import pytest

from attnverify.kernels import _autotune


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


def test_bad_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_autotune.ENV, "fast")
    with pytest.raises(ValueError, match=r"\$ATTNVERIFY_AUTOTUNE must be one of 1, 0, rotate"):
        _autotune.select(["a", "b"], ())
