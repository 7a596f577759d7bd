"""Case strategies: drawn cases are valid and cheap, and reach the places bugs live."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from attnverify.verify.case import VARIANTS, Case
from attnverify.verify.profiles import budget
from attnverify.verify.specs import get_spec
from attnverify.verify.strategies import cases

CPU = torch.device("cpu")
# Generate only: the first case that reaches the place is proof enough (no shrinking).
FIND = settings(
    max_examples=1000,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _work(case: Case) -> int:
    """Attention MACs of a case (sum over heads of Lq * Lk * D)."""
    if case.variant == "varlen":
        pairs = sum(a * b for a, b in zip(case.seqlens_q, case.seqlens_k, strict=True))
        return pairs * case.heads_q * case.head_dim
    if case.variant == "paged":
        return case.lq * sum(case.seq_lens) * case.heads_q * case.head_dim
    if case.variant == "merge":
        return 0
    return case.batch * case.heads_q * case.lq * case.lk * case.head_dim


@settings(max_examples=60)
@given(st.sampled_from(VARIANTS).flatmap(lambda v: cases(v, "ci")))
def test_strategies_draw_valid_cases_within_budget(case: Case) -> None:
    b = budget("ci")
    assert case.head_dim <= b.max_head_dim and case.heads_q <= b.max_heads_q, case
    assert case.heads_q % case.heads_k == 0, case
    assert _work(case) <= b.max_work, (case.short(), _work(case))
    spec = get_spec(case.variant)
    inputs = spec.make_inputs(case, CPU)
    again = spec.make_inputs(case, CPU)
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor):
            assert torch.equal(
                x.view(torch.uint8) if x.dtype.itemsize == 1 else x.nan_to_num(),
                again[name].view(torch.uint8)
                if x.dtype.itemsize == 1
                else again[name].nan_to_num(),
            ), name
    spec.run(spec.oracle(), inputs, case, grads=False, leaf_dtype=torch.float64)


REACH: dict[str, list[tuple[str, Callable[[Case], bool]]]] = {
    "gqa": [
        ("Lq = 1", lambda c: c.lq == 1 and c.lk > 1),
        ("Lq > Lk causal", lambda c: c.lq > c.lk and c.causal),
        ("Lq < Lk causal", lambda c: c.lq < c.lk and c.causal),
        ("D = 72", lambda c: c.head_dim == 72),
        ("D = 136", lambda c: c.head_dim == 136),
        ("G = 8", lambda c: c.heads_q == 8 * c.heads_k),
        ("G = 3 with Hk > 1", lambda c: c.heads_q == 3 * c.heads_k and c.heads_k > 1),
        ("Hk = 1 < Hq", lambda c: c.heads_k == 1 and c.heads_q > 1),
        ("Lk = 65 (one past a tile)", lambda c: c.lk == 65),
        ("Lq = 129", lambda c: c.lq == 129),
        (
            "kv-headed mask",
            lambda c: bool(c.mask_shape) and c.mask_shape[1] == c.heads_k != c.heads_q,
        ),
        ("per-query-head bias", lambda c: bool(c.bias_shape) and c.bias_shape[1] == c.heads_q > 1),
        ("bias broadcast over Lq", lambda c: bool(c.bias_shape) and c.bias_shape[2] == 1 < c.lq),
        ("float32 bias", lambda c: c.bias_dtype == "float32"),
        ("stride-0 expanded bias", lambda c: c.broadcast_views and c.bias_shape is not None),
        ("blank tiles", lambda c: c.mask_kind == "tiles" and c.lk > c.mask_tile),
        ("blank rows", lambda c: c.mask_kind == "rows"),
        ("packed qkv", lambda c: c.layout == "packed" and c.lq == c.lk),
        ("peaked", lambda c: c.distribution == "peaked"),
        ("outliers", lambda c: c.distribution == "outliers"),
    ],
    "varlen": [
        ("zero-length sequence", lambda c: 0 in c.seqlens_q and len(c.seqlens_q) > 1),
        (
            "keys without queries",
            lambda c: any(a == 0 < b for a, b in zip(c.seqlens_q, c.seqlens_k, strict=True)),
        ),
        (
            "Lq != Lk per sequence",
            lambda c: any(a != b for a, b in zip(c.seqlens_q, c.seqlens_k, strict=True)),
        ),
        ("four sequences", lambda c: len(c.seqlens_q) == 4),
        ("offset layout", lambda c: c.layout == "offset"),
    ],
    "fp8": [
        ("per-head descale, G > 1", lambda c: c.descale == "head" and c.heads_q > c.heads_k),
        ("V sequence-contiguous", lambda c: c.layout == "v_seq_contiguous"),
        ("e5m2", lambda c: c.dtype == "float8_e5m2"),
    ],
    "paged": [
        ("partial last block", lambda c: any(n % c.block_size > 0 for n in c.seq_lens)),
        ("seq_len 0", lambda c: 0 in c.seq_lens),
        (
            "more splits than blocks",
            lambda c: (c.num_splits or 0) > max(-(-n // c.block_size) for n in c.seq_lens) > 0,
        ),
        ("-1 past the end", lambda c: any(-1 in row for row in c.block_tables)),
        (
            "ids past num_blocks",
            lambda c: any(x >= c.num_blocks for row in c.block_tables for x in row),
        ),
        ("spare blocks", lambda c: c.num_blocks > sum(-(-n // c.block_size) for n in c.seq_lens)),
        ("Lq > 1, HND", lambda c: c.lq > 1 and c.kv_layout == "HND"),
        (
            "fp8 cache, per-head descale",
            lambda c: c.cache_dtype is not None and c.descale == "head",
        ),
        ("K/V from one buffer", lambda c: c.layout == "packed"),
    ],
    "merge": [
        ("all states empty in some row", lambda c: c.state_kind == "all_empty"),
        ("33 states", lambda c: c.num_states == 33),
        ("lse 100s apart", lambda c: c.state_kind == "spread"),
    ],
}


@pytest.mark.parametrize(
    ("variant", "label", "predicate"),
    [(v, label, p) for v, items in REACH.items() for label, p in items],
    ids=[f"{v}-{label}" for v, items in REACH.items() for label, _ in items],
)
def test_strategies_reach(variant: str, label: str, predicate: Callable[[Case], bool]) -> None:
    found = find(cases(variant, "ci"), predicate, settings=FIND)
    assert predicate(found), (label, found.short())


def _values(x: torch.Tensor) -> torch.Tensor:
    return x.float().contiguous()


@pytest.mark.parametrize("layout", ["transposed", "offset", "packed"])
@pytest.mark.parametrize("variant", ["gqa", "varlen", "fp8"])
def test_strategies_layouts_change_strides_not_values(variant: str, layout: str) -> None:
    base = {
        "gqa": Case(
            variant="gqa", dtype="float16", seed=4, heads_q=4, heads_k=2, lq=9, lk=9, head_dim=72
        ),
        "varlen": Case(
            variant="varlen",
            dtype="float16",
            seed=4,
            heads_q=4,
            heads_k=2,
            head_dim=32,
            seqlens_q=(3, 5),
            seqlens_k=(3, 5),
        ),
        "fp8": Case(
            variant="fp8",
            dtype="float8_e4m3fn",
            seed=4,
            heads_q=2,
            heads_k=2,
            lq=7,
            lk=7,
            out_dtype="float16",
        ),
    }[variant]
    spec = get_spec(variant)
    plain = spec.make_inputs(base, CPU)
    viewed = spec.make_inputs(dataclasses.replace(base, layout=layout), CPU)
    for name in ("q", "k", "v"):
        assert not viewed[name].is_contiguous(), (name, viewed[name].stride())
        assert torch.equal(_values(plain[name]), _values(viewed[name])), name


def test_strategies_paged_unused_slots_are_nan_and_tables_junk() -> None:
    case = Case(
        variant="paged",
        dtype="float16",
        seed=1,
        batch=2,
        heads_q=2,
        heads_k=1,
        head_dim=32,
        seq_lens=(5, 0),
        block_size=4,
        num_blocks=3,
        block_tables=((2, 0, -1), (-1, 9, 1)),
    )
    inputs = get_spec("paged").make_inputs(case, CPU)
    k = inputs["k_cache"]
    assert not torch.isnan(k[2]).any() and not torch.isnan(k[0, 0]).any()
    assert torch.isnan(k[0, 1:]).all() and torch.isnan(k[1]).all()


def test_strategies_fp8_values_reach_the_format_max_per_head() -> None:
    case = Case(
        variant="fp8",
        dtype="float8_e4m3fn",
        seed=2,
        batch=2,
        heads_q=4,
        heads_k=2,
        lq=5,
        lk=6,
        descale="head",
        out_dtype="float16",
    )
    inputs = get_spec("fp8").make_inputs(case, CPU)
    fmax = torch.finfo(torch.float8_e4m3fn).max
    for name in ("q", "k", "v"):
        x = inputs[name].float()
        per_head = x.abs().reshape(2, 2, -1).amax(dim=-1)
        assert torch.equal(per_head, torch.full_like(per_head, fmax)), (name, per_head)
        d = inputs[f"{name}_descale"]
        assert d.shape == (2, 2) and len(set(d.flatten().tolist())) == 4, (name, d)
        assert not any(
            math.isclose(a * b, 1.0) for a in d.flatten().tolist() for b in d.flatten().tolist()
        )


def test_specs_flops_and_bytes_models() -> None:
    gqa = get_spec("gqa")
    causal = Case(
        variant="gqa", dtype="float16", seed=0, heads_q=2, head_dim=64, lq=4, lk=4, causal=True
    )
    assert gqa.flops(causal) == 4 * (1 + 2 + 3 + 4) * 2 * 64
    wide = dataclasses.replace(causal, lq=2, lk=5)
    assert gqa.flops(wide) == 4 * (4 + 5) * 2 * 64
    varlen = Case(
        variant="varlen", dtype="float16", seed=0, head_dim=8, seqlens_q=(3, 0), seqlens_k=(2, 5)
    )
    assert get_spec("varlen").flops(varlen) == 4 * 6 * 1 * 8
    decode = Case(
        variant="paged",
        dtype="float16",
        seed=0,
        heads_q=4,
        heads_k=2,
        head_dim=64,
        seq_lens=(10, 3),
        batch=2,
        block_tables=((0,), (1,)),
        num_blocks=2,
    )
    kv_bytes = 2 * (10 + 3) * 2 * 64 * 2
    q_out_bytes = 2 * 2 * 4 * 1 * 64 * 2
    assert get_spec("paged").bytes_moved(decode) == kv_bytes + q_out_bytes
    fp8_cache = dataclasses.replace(decode, cache_dtype="float8_e4m3fn")
    assert get_spec("paged").bytes_moved(fp8_cache) == kv_bytes // 2 + q_out_bytes


@pytest.mark.parametrize("variant", VARIANTS)
def test_specs_bench_cases_are_real_model_shapes(variant: str) -> None:
    shapes = get_spec(variant).bench_cases()
    assert shapes and all(c.variant == variant for c in shapes)
    first = shapes[0]
    assert Case.from_json(first.to_json()) == first
    assert get_spec(variant).bytes_moved(first) > 0
    if variant != "merge":
        assert first.heads_q >= 16 and first.head_dim in (72, 80, 128), first.short()[:200]
        assert get_spec(variant).flops(first) > 1e9


@pytest.mark.parametrize("profile", ["device", "thorough"])
@settings(max_examples=30)
@given(data=st.data())
def test_strategies_large_profiles_respect_their_budget(profile: str, data: st.DataObject) -> None:
    variant = data.draw(st.sampled_from(VARIANTS))
    case = data.draw(cases(variant, profile))
    b = budget(profile)
    assert _work(case) <= b.max_work and case.heads_q <= b.max_heads_q, case.short()
    assert case.head_dim <= b.max_head_dim and case.heads_q % case.heads_k == 0
    for n in (*case.seqlens_q, *case.seqlens_k, *case.seq_lens, case.lq, case.lk):
        assert n <= b.max_len, case.short()
    if variant == "paged":
        assert case.num_blocks <= b.max_blocks + 3, case.short()


def test_specs_sparse_mask_blanks_nine_in_ten_whole_tiles() -> None:
    """The block-sparse bench mask: ~90% of its aligned tiles all False, the rest all True
    (no holes inside a kept tile), so a kernel's time shows the tile skipping alone."""
    from attnverify.verify.gqa import SPARSE_BLANK_P, make_mask

    case = Case(variant="gqa", dtype="bfloat16", seed=0, heads_q=2, heads_k=2, head_dim=16,
                lq=640, lk=1280, mask_shape=(1, 1, 640, 1280), mask_kind="sparse",
                mask_tile=64)  # fmt: skip
    mask = make_mask(case, torch.Generator().manual_seed(0))
    tiles = mask.reshape(1, 1, 10, 64, 20, 64).transpose(3, 4).reshape(1, 1, 10, 20, -1)
    kept = tiles.all(-1)
    assert torch.equal(kept, tiles.any(-1)), "a tile is partly blank"
    assert abs(1 - kept.float().mean().item() - SPARSE_BLANK_P) < 0.06


def test_specs_bench_backward_shapes_are_the_issue_targets() -> None:
    gqa = [c for c in get_spec("gqa").bench_cases() if get_spec("gqa").bench_backward(c)]
    assert gqa and all(c.dtype == "bfloat16" and not c.causal for c in gqa)
    assert {c.bias_shape is not None for c in gqa} == {True, False}
    varlen = get_spec("varlen")
    assert [c.head_dim for c in varlen.bench_cases() if varlen.bench_backward(c)] == [128, 128]
    assert not any(get_spec(v).bench_backward(get_spec(v).bench_cases()[0])
                   for v in ("fp8", "paged", "merge"))  # fmt: skip
