"""Hypothesis strategies drawing case *metadata* (shapes, lengths, flags, block tables, seeds).

Tensor values never come from hypothesis: each `Case` carries a seed and its spec draws values
from a `torch.Generator`. Shared building blocks live here; each variant's composite strategy
lives beside its spec (`gqa_cases` in `verify/gqa.py`, ...) and is reachable through `cases()`.
Every strategy shrinks towards the smallest, plainest case (length 1, one head, contiguous,
normal values), so a shrunk failure names the feature that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from attnverify.verify.case import Case
from attnverify.verify.profiles import Budget

# Shrinks towards 64. Powers of two and not; D % 16 != 0 (8, 24, 40, 72, 88, 136, 200) in about
# half the draws: the class where padded or split head-dim tiles go wrong.
HEAD_DIMS = (64, 32, 128, 8, 16, 72, 80, 96, 112, 136, 144, 256, 24, 40, 88, 200)
SPECIAL_LENGTHS = (1, 16, 17, 15, 32, 33, 63, 64, 65, 111, 127, 128, 129, 160, 255, 256, 257)
TILE_SIZES = (16, 32, 64, 128)
GROUP_SIZES = (1, 2, 3, 4, 8, 5)
KV_HEADS = (1, 2, 3, 4)


def lengths(max_len: int, *, min_len: int = 1) -> st.SearchStrategy[int]:
    """Sequence lengths in [min_len, max_len]: block-size edges (15/16/17, 63/64/65, ...) and any
    integer; shrinks towards min_len."""
    max_len = max(min_len, max_len)
    special = [n for n in SPECIAL_LENGTHS if min_len <= n <= max_len]
    lo = [min_len] if min_len not in special else []
    return st.one_of(st.sampled_from(lo + special), st.integers(min_len, max_len))


def head_dims(budget: Budget, multiple: int = 8) -> st.SearchStrategy[int]:
    """Head dims D, powers of two and not (72, 80, 96, 112, 136, 144, ...), up to the budget's
    maximum, D % multiple == 0; shrinks towards 64."""
    return st.sampled_from([d for d in HEAD_DIMS if d <= budget.max_head_dim and d % multiple == 0])


def head_counts(max_heads_q: int) -> st.SearchStrategy[tuple[int, int]]:
    """(Hq, Hk) with G = Hq // Hk in GROUP_SIZES, Hk in KV_HEADS, Hq <= max_heads_q (at least
    (1, 1)); shrinks towards Hq = Hk = 1."""
    cap = max(1, max_heads_q)
    pairs = [(hk * g, hk) for hk in KV_HEADS for g in GROUP_SIZES if hk * g <= cap]
    return st.sampled_from(pairs)


def seeds() -> st.SearchStrategy[int]:
    """Case seeds (the source of every tensor value); shrinks towards 0."""
    return st.integers(0, 2**32 - 1)


def cases(
    variant: str, profile: str = "ci", dtypes: Sequence[str] | None = None
) -> st.SearchStrategy[Case]:
    """The case strategy of a variant ("varlen", "gqa", "fp8", "paged", "merge")."""
    from attnverify.verify.specs import get_spec

    return get_spec(variant).strategy(profile, dtypes)


__all__ = [
    "HEAD_DIMS",
    "SPECIAL_LENGTHS",
    "TILE_SIZES",
    "cases",
    "head_counts",
    "head_dims",
    "lengths",
    "seeds",
]
