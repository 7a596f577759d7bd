"""Load the pinned real-model cases of `fixtures/*.json` (schema: fixtures/README.md).

`load_fixtures(variant)` validates every file and returns `Fixture`s; `fixture_case` turns one
into the test case dataclass of its variant; `fixture_examples(variant)` is a decorator that
adds every fixture of a variant as a hypothesis `@example(case=...)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import example

from .cases import Fp8Case, GqaCase, PagedCase, VarlenCase

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures"
VARIANTS = ("varlen", "gqa", "fp8", "paged")
TOP_KEYS = {"name", "variant", "source", "params", "seed"}
OPTIONAL_TOP_KEYS = {"notes"}
PARAM_KEYS = {
    "varlen": (
        {"Hq", "Hk", "D", "causal", "dtype"},
        {"grid_thw", "seqlens", "seqlens_q", "seqlens_k"},
    ),
    "gqa": (
        {"B", "Hq", "Hk", "Lq", "Lk", "D", "causal", "mask_shape", "bias_shape", "dtype"},
        set(),
    ),
    "fp8": (
        {"B", "Hq", "Hk", "Lq", "Lk", "D", "causal", "fp8_dtype", "granularity", "out_dtype"},
        set(),
    ),
    "paged": (
        {
            "Hq",
            "Hk",
            "D",
            "Lq",
            "block_size",
            "seq_lens",
            "num_splits",
            "kv_layout",
            "cache_dtype",
            "dtype",
        },
        set(),
    ),
}

Case = VarlenCase | GqaCase | Fp8Case | PagedCase


@dataclass(frozen=True)
class Fixture:
    """One pinned case: its file name stem, variant, source config note, params and seed."""

    name: str
    variant: str
    source: str
    params: dict[str, Any]
    seed: int


def _validate(path: Path, data: Any) -> Fixture:
    if not isinstance(data, dict) or not TOP_KEYS <= data.keys() <= TOP_KEYS | OPTIONAL_TOP_KEYS:
        raise ValueError(f"{path}: top-level keys must be {sorted(TOP_KEYS)} (+ notes)")
    if data["name"] != path.stem:
        raise ValueError(f"{path}: name must equal the file stem; got {data['name']!r}")
    if data["variant"] not in VARIANTS:
        raise ValueError(f"{path}: variant must be one of {VARIANTS}; got {data['variant']!r}")
    required, optional = PARAM_KEYS[data["variant"]]
    keys = set(data["params"])
    if not required <= keys or keys - required - optional:
        raise ValueError(
            f"{path}: params must hold {sorted(required)} (optional {sorted(optional)}); "
            f"got {sorted(keys)}"
        )
    if not isinstance(data["seed"], int) or not data["source"]:
        raise ValueError(f"{path}: seed must be an int and source non-empty")
    return Fixture(data["name"], data["variant"], data["source"], data["params"], data["seed"])


def load_fixtures(variant: str | None = None) -> list[Fixture]:
    """All fixtures (of `variant`, if given), sorted by name; raises ValueError on a bad file."""
    fixtures = [
        _validate(path, json.loads(path.read_text())) for path in sorted(FIXTURE_DIR.glob("*.json"))
    ]
    return [f for f in fixtures if variant is None or f.variant == variant]


def _varlen_lengths(p: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if "grid_thw" in p:
        lens = tuple(h * w for t, h, w in p["grid_thw"] for _ in range(t))
        return lens, lens
    if "seqlens" in p:
        return tuple(p["seqlens"]), tuple(p["seqlens"])
    return tuple(p["seqlens_q"]), tuple(p["seqlens_k"])


def fixture_case(fx: Fixture) -> Case:
    """The test case dataclass of `fx`'s variant, with the fixture's shapes and seed."""
    p = fx.params
    if fx.variant == "varlen":
        seqlens_q, seqlens_k = _varlen_lengths(p)
        return VarlenCase(seqlens_q, seqlens_k, p["Hq"], p["Hk"], p["D"], p["causal"], fx.seed)
    if fx.variant == "gqa":
        return GqaCase(
            b=p["B"],
            hq=p["Hq"],
            hk=p["Hk"],
            lq=p["Lq"],
            lk=p["Lk"],
            d=p["D"],
            causal=p["causal"],
            mask_shape=tuple(p["mask_shape"]) if p["mask_shape"] else None,
            bias_shape=tuple(p["bias_shape"]) if p["bias_shape"] else None,
            seed=fx.seed,
        )
    if fx.variant == "fp8":
        return Fp8Case(
            b=p["B"],
            hq=p["Hq"],
            hk=p["Hk"],
            lq=p["Lq"],
            lk=p["Lk"],
            d=p["D"],
            causal=p["causal"],
            dtype=p["fp8_dtype"],
            granularity=p["granularity"],
            seed=fx.seed,
        )
    return PagedCase(
        seq_lens=tuple(p["seq_lens"]),
        hq=p["Hq"],
        hk=p["Hk"],
        d=p["D"],
        lq=p["Lq"],
        block_size=p["block_size"],
        num_splits=p["num_splits"],
        kv_layout=p["kv_layout"],
        cache_dtype=p["cache_dtype"],
        seed=fx.seed,
    )


def fixture_examples(variant: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: every fixture of `variant` as a hypothesis `@example(case=...)`."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for fx in load_fixtures(variant):
            test = example(case=fixture_case(fx))(test)
        return test

    return decorate


__all__ = ["FIXTURE_DIR", "Fixture", "fixture_case", "fixture_examples", "load_fixtures"]
