"""Case: frozen metadata, JSON round trip for every variant's drawn cases, save/load, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnverify.verify.case import VARIANTS, Case
from attnverify.verify.strategies import cases


@settings(max_examples=40)
@given(st.sampled_from(VARIANTS).flatmap(lambda v: cases(v, "ci")))
def test_case_json_round_trip(case: Case) -> None:
    text = case.to_json()
    back = Case.from_json(text)
    assert back == case, f"{text} came back as {back.to_json()}"
    assert json.loads(text)["variant"] == case.variant


def test_case_save_load_and_replay_file(tmp_path) -> None:
    case = Case(
        variant="paged",
        dtype="float16",
        seed=7,
        batch=2,
        seq_lens=(0, 17),
        block_tables=((-1,), (3, 1)),
        num_blocks=4,
        num_splits=8,
    )
    path = case.save(tmp_path / "sub" / "case.json")
    assert Case.load(path) == case
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps({"case": case.to_dict(), "target": "x", "grads": False}))
    assert Case.load(replay) == case


def test_case_is_frozen_and_json_omits_defaults() -> None:
    case = Case(variant="gqa", dtype="float32", seed=1, lq=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.lq = 6  # type: ignore[misc]
    assert case.to_dict() == {"variant": "gqa", "dtype": "float32", "seed": 1, "lq": 5}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"variant": "attn", "dtype": "float16", "seed": 0}, "variant must be one of"),
        ({"variant": "gqa", "dtype": "float17", "seed": 0}, "dtype name"),
        ({"variant": "gqa", "dtype": "float16", "seed": 0, "heads": 3}, "unknown fields"),
    ],
)
def test_case_rejects_bad_json(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Case.from_json(json.dumps(data))
