"""Dealing cases over workers: every case once, compile-affinity groups never split (no two
workers compile one kernel), loads balanced to within the largest group."""

from __future__ import annotations

import pytest

from attnverify.verify.shard import compile_affinity, deal, draw_cases


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("variant", ["gqa", "paged"])
def test_deal_keeps_groups_whole_and_balanced(variant: str, workers: int) -> None:
    cases = draw_cases(variant, profile="ci", dtypes=["float16", "float32"], examples=12, seed=0)
    shards = deal(cases, workers)
    assert len(shards) == workers
    dealt = [case for shard in shards for case in shard]
    assert sorted(map(repr, dealt)) == sorted(map(repr, cases)), "a case lost or dealt twice"
    owner = {}
    for rank, shard in enumerate(shards):
        for case in shard:
            key = repr(compile_affinity(case))
            assert owner.setdefault(key, rank) == rank, f"group {key} split over workers"
    biggest = max(sum(1 for c in cases if repr(compile_affinity(c)) == k) for k in owner)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= biggest
    for shard in shards:  # draw order kept within a worker
        assert [cases.index(c) for c in shard] == sorted(cases.index(c) for c in shard)


def test_fp8_cases_of_one_head_dim_share_a_worker() -> None:
    """fp8's V transpose kernel moves bytes: one compile serves both fp8 dtypes, causal or not,
    any out dtype, so those cases must not be dealt to two workers."""
    cases = draw_cases(
        "fp8", profile="ci", dtypes=["float8_e4m3fn", "float8_e5m2"], examples=30, seed=0
    )
    by_dim: dict[int | None, set[tuple]] = {}
    for case in cases:
        by_dim.setdefault(case.head_dim, set()).add((case.dtype, case.causal, case.out_dtype))
    assert any(len(kinds) > 1 for kinds in by_dim.values()), "draw holds no mixed head dim"
    for shard_count in (2, 3):
        owner: dict[int | None, int] = {}
        for rank, shard in enumerate(deal(cases, shard_count)):
            for case in shard:
                assert owner.setdefault(case.head_dim, rank) == rank
