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
