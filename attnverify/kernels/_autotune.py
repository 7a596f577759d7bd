"""The autotune policy of every autotuned kernel, from `$ATTNVERIFY_AUTOTUNE`.

- unset or "1": autotune (Triton times every config that survives pruning, per autotune key,
  and keeps the fastest).
- "0": the first surviving config (sweeps and timings of one config).
- "rotate": one surviving config per autotune key, picked by a stable hash of the key. A
  verification run draws many keys (head dims, flags, dtypes): it then compiles one config per
  key instead of all of them, and still runs every config over the run. `attnverify verify` on
  a GPU uses it unless the variable is set.
Kernels whose shared memory is known only after compiling (the flash core of varlen / gqa)
pin with `pinned_order`: the policy's pick first, then the next configs in turn, so a pick
that does not fit the device falls through to one that does."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TypeVar

from attnverify.kernels._common import env_choice

ENV = "ATTNVERIFY_AUTOTUNE"
POLICIES = ("1", "0", "rotate")
T = TypeVar("T")


def policy() -> str:
    """The policy in force ("1" when the variable is unset).

    Raises:
        ValueError: the variable holds something else than the documented values.
    """
    return env_choice(ENV, POLICIES, "1")


def pinned_order(configs: Sequence[T], key: tuple) -> list[T] | None:
    """The configs in the order a pinning policy tries them for one autotune `key` (its
    values, dtypes included): "0" as given, "rotate" from the key's hashed pick on, wrapping
    around; None under "1" (autotune them)."""
    mode = policy()
    if mode == "1":
        return None
    start = 0 if mode == "0" else zlib.crc32(repr(key).encode()) % max(len(configs), 1)
    return [*configs[start:], *configs[:start]]


def select(configs: Sequence[T], key: tuple) -> list[T]:
    """The configs to autotune over for one autotune `key`: all of them under "1", else the
    policy's one pick (`pinned_order`'s first)."""
    order = pinned_order(configs, key)
    return list(configs) if order is None else order[:1]


__all__ = ["ENV", "POLICIES", "pinned_order", "policy", "select"]
