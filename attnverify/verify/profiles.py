"""Hypothesis profiles `ci` (CPU interpreter, derandomized), `device` (GPU), `thorough`, and the
size budget each profile gives the case strategies.

Select one with `HYPOTHESIS_PROFILE=<name>`, `pytest --hypothesis-profile=<name>`,
`pytest --attnverify-profile=<name>` (the plugin), or `attnverify verify --profile <name>`.
Example counts are per test / per variant x dtype.

The budget bounds what a drawn case may cost: on the CPU interpreter a `ci` case runs well under
a second (oracle, baseline and implementation, forward and backward).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings

PROFILES = {
    "ci": {"max_examples": 12, "derandomize": True},
    "device": {"max_examples": 120},
    "thorough": {"max_examples": 1000},
}

_SLOW_OK = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.nested_given,
]


@dataclass(frozen=True)
class Budget:
    """Size limits for drawn cases.

    Attributes:
        max_len: longest sequence (Lq, Lk, a varlen sequence, a paged context).
        max_head_dim: largest head dim D drawn.
        max_heads_q: most query heads Hq.
        max_batch: most batch entries / varlen sequences / paged requests.
        max_work: bound on sum over batch and heads of Lq * Lk * D (the attention MACs).
        max_tiles: bound on batch x Hq x (64 x 64 score tiles): the Triton interpreter's cost
            grows with the number of tiles it steps through, not with MACs.
        max_blocks: most physical blocks in a paged cache.
        shrink_calls: most case runs spent shrinking one failure to a minimal case.
    """

    max_len: int
    max_head_dim: int
    max_heads_q: int
    max_batch: int
    max_work: int
    max_tiles: int
    max_blocks: int
    shrink_calls: int


BUDGETS = {
    "ci": Budget(
        max_len=320,
        max_head_dim=256,
        max_heads_q=8,
        max_batch=3,
        max_work=3_000_000,
        max_tiles=24,
        max_blocks=48,
        shrink_calls=60,
    ),
    "device": Budget(
        max_len=1100,
        max_head_dim=256,
        max_heads_q=16,
        max_batch=4,
        max_work=400_000_000,
        max_tiles=200_000,
        max_blocks=512,
        shrink_calls=200,
    ),
    "thorough": Budget(
        max_len=2100,
        max_head_dim=256,
        max_heads_q=32,
        max_batch=6,
        max_work=1_500_000_000,
        max_tiles=1_000_000,
        max_blocks=2048,
        shrink_calls=500,
    ),
}


def register_profiles() -> None:
    """Register the three profiles with hypothesis, once per process (hypothesis ships its own
    `ci` profile, which this replaces; later calls, possibly inside an @settings test where
    hypothesis refuses registration, do nothing)."""
    if _registered:
        return
    for name, options in PROFILES.items():
        settings.register_profile(
            name, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True, **options
        )
    _registered.append(True)


_registered: list[bool] = []


def budget(profile: str) -> Budget:
    """The size budget of a profile.

    Raises:
        ValueError: unknown profile name (the message lists the valid ones).
    """
    if profile not in BUDGETS:
        raise ValueError(f"profile must be one of {', '.join(BUDGETS)}; got {profile!r}")
    return BUDGETS[profile]


def heads_room(b: Budget, head_dim: int, pairs: int, tiles: int) -> int:
    """How many (batch x Hq) attention heads fit the budget, given one head's Lq * Lk pairs
    and 64 x 64 tiles (at least 1)."""
    by_work = b.max_work // max(1, head_dim * pairs)
    by_tiles = b.max_tiles // max(1, tiles)
    return max(1, min(by_work, by_tiles))


def tiles(lq: int, lk: int) -> int:
    """Number of 64 x 64 score tiles of one head (at least 1)."""
    return max(1, -(-lq // 64)) * max(1, -(-lk // 64))


__all__ = ["BUDGETS", "PROFILES", "Budget", "budget", "heads_room", "register_profiles", "tiles"]
