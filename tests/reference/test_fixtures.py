"""The pinned real-model fixtures load, validate, cover the models they are for, and agree with
`cu_seqlens_from_grid_thw`; the loader rejects malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnverify.reference import cu_seqlens_from_grid_thw

from . import fixtures
from .fixtures import fixture_case, load_fixtures


def test_fixtures_cover_the_models() -> None:
    """Qwen2/2.5-VL (16 heads, D = 80) and Qwen3-VL (D = 72) vision encoders, Llama-3-8B-style
    32/8 heads D = 128, a hybrid model's 16/2 heads D = 256 layer; every variant present."""
    found = {(f.variant, f.params["Hq"], f.params["Hk"], f.params["D"]) for f in load_fixtures()}
    assert {
        ("varlen", 16, 16, 80),
        ("varlen", 16, 16, 72),
        ("gqa", 32, 8, 128),
        ("gqa", 16, 2, 256),
        ("fp8", 32, 8, 128),
        ("paged", 32, 8, 128),
        ("paged", 16, 2, 256),
    } <= found
    assert {f.variant for f in load_fixtures()} == set(fixtures.VARIANTS)


@pytest.mark.parametrize("fx", load_fixtures("varlen"), ids=lambda f: f.name)
def test_fixture_grid_thw_matches_helper(fx: fixtures.Fixture) -> None:
    """Per-frame lengths of a grid_thw fixture are those of cu_seqlens_from_grid_thw."""
    case = fixture_case(fx)
    if "grid_thw" not in fx.params:
        assert sum(case.seqlens_q) > 0
        return
    cu = cu_seqlens_from_grid_thw(torch.tensor(fx.params["grid_thw"]))
    assert cu.tolist() == case.cu_seqlens_q == case.cu_seqlens_k


def write(tmp_path: Path, data: dict, name: str = "bad") -> None:
    (tmp_path / f"{name}.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"variant": "sparse"}, "variant must be one of"),
        ({"name": "other"}, "name must equal the file stem"),
        ({"params": {"Hq": 2}}, "params must hold"),
        ({"seed": "0"}, "seed must be an int"),
        ({"extra": 1}, "top-level keys must be"),
    ],
    ids=["variant", "name", "params", "seed", "extra-key"],
)
def test_fixture_loader_rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, match: str
) -> None:
    good = json.loads(next(fixtures.FIXTURE_DIR.glob("*.json")).read_text())
    write(tmp_path, {**good, "name": "bad", **change})
    monkeypatch.setattr(fixtures, "FIXTURE_DIR", tmp_path)
    with pytest.raises(ValueError, match=match):
        load_fixtures()
