"""The autotune policy of every autotuned kernel, from `$ATTNVERIFY_AUTOTUNE`.

- unset or "1": autotune (Triton times every config that survives pruning, per autotune key,
  and keeps the fastest).
- "0": the first surviving config (sweeps and timings of one config).
- "rotate": one surviving config per autotune key, picked by a stable hash of the key. A
  verification run draws many keys (head dims, flags, dtypes): it then compiles one config per
  key instead of all of them, and still runs every config over the run. `attnverify verify` on
  a GPU uses it unless the variable is set. Kernels whose shared memory is known only after
  compiling (the flash core of varlen / gqa) keep autotuning under it: the autotuner drops a
  config that does not fit, where a pinned one would fail the launch.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from typing import TypeVar

ENV = "ATTNVERIFY_AUTOTUNE"
POLICIES = ("1", "0", "rotate")
T = TypeVar("T")


def policy() -> str:
    """The policy in force ("1" when the variable is unset).

    Raises:
        ValueError: the variable holds something else than the documented values.
    """
    value = os.environ.get(ENV, "1")
    if value not in POLICIES:
        raise ValueError(f"${ENV} must be one of {', '.join(POLICIES)}; got {value!r}")
    return value


def select(configs: Sequence[T], key: tuple) -> list[T]:
    """The configs to autotune over for one autotune `key` (its values, dtypes included)."""
    mode = policy()
    if mode == "1" or len(configs) <= 1:
        return list(configs)
    if mode == "0":
        return list(configs[:1])
    return [configs[zlib.crc32(repr(key).encode()) % len(configs)]]


__all__ = ["ENV", "POLICIES", "policy", "select"]
