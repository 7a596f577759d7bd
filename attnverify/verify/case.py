"""`Case`: one verification case as plain metadata (shapes, flags, seed), JSON round-trippable.

A case holds no tensors. Its variant's spec (`attnverify.verify.specs.get_spec(case.variant)`)
builds the inputs from the metadata, drawing every value from `torch.Generator` seeded with
`case.seed`, so a case file reproduces the exact tensors on any machine with the same torch.

Fields are shared by every variant; each variant reads the ones it needs (the rest keep their
defaults and stay out of the JSON):

- all: `variant`, `dtype` (input dtype name, e.g. "float16", "float8_e4m3fn"), `seed`,
  `heads_q` (Hq), `heads_k` (Hk), `head_dim` (D), `distribution`, `layout`, `scale`.
- gqa / fp8: `batch` (B), `lq` (Lq), `lk` (Lk), `causal`; gqa: `mask_shape`, `mask_kind`,
  `mask_tile`, `bias_shape`, `bias_dtype`, `broadcast_views` (mask/bias passed as stride-0
  expanded views of their broadcast shape); fp8: `out_dtype`, `descale`.
- varlen: `seqlens_q`, `seqlens_k` (one length per sequence, zero allowed), `causal`,
  `max_seqlen_slack` (added to the true maxima passed as max_seqlen_q/k: callers pass bounds).
- paged: `batch`, `lq` (new tokens per request), `seq_lens`, `block_size`, `num_blocks`,
  `block_tables`, `kv_layout`, `num_splits`, `descale` (fp8 caches), `cache_dtype`.
- merge: `lead_shape` (the `...` dims), `num_states` (S), `state_kind`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("varlen", "gqa", "fp8", "paged", "merge")
DISTRIBUTIONS = ("normal", "peaked", "outliers")
LAYOUTS = ("contiguous", "transposed", "packed", "offset")
MASK_KINDS = ("none", "random", "tiles", "rows", "sparse")


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype called `name` ("float16", "float8_e4m3fn", ...)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype name must name a torch dtype (e.g. 'float16'); got {name!r}")
    return dtype


def dtype_name(dtype: torch.dtype | str) -> str:
    """The short name of a dtype: torch.float16 -> "float16" (strings pass through)."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Case:
    """One verification case: metadata only; values come from `seed` (see module docstring)."""

    variant: str
    dtype: str
    seed: int
    batch: int = 1
    heads_q: int = 1
    heads_k: int = 1
    head_dim: int = 64
    lq: int = 1
    lk: int = 1
    causal: bool = False
    scale: float | None = None
    distribution: str = "normal"
    layout: str = "contiguous"
    mask_shape: tuple[int, ...] | None = None
    mask_kind: str = "none"
    mask_tile: int = 0
    bias_shape: tuple[int, ...] | None = None
    bias_dtype: str | None = None
    broadcast_views: bool = False
    seqlens_q: tuple[int, ...] = ()
    seqlens_k: tuple[int, ...] = ()
    max_seqlen_slack: int = 0
    out_dtype: str | None = None
    descale: str = "tensor"
    seq_lens: tuple[int, ...] = ()
    block_size: int = 16
    num_blocks: int = 0
    block_tables: tuple[tuple[int, ...], ...] = ()
    kv_layout: str = "NHD"
    num_splits: int | None = None
    cache_dtype: str | None = None
    lead_shape: tuple[int, ...] = ()
    num_states: int = 1
    state_kind: str = "normal"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        dtype_from_name(self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        """`dtype` as a torch dtype."""
        return dtype_from_name(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (plus variant, dtype, seed)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                out[f.name] = _to_plain(value)
        return out

    def to_json(self) -> str:
        """A one-line JSON object; `Case.from_json(case.to_json()) == case`."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """Build a case from `to_dict()` output (lists become tuples; unknown keys are errors)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"case JSON has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**{k: _to_tuple(v) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> Case:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the case as JSON to `path` (parent directories are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Case:
        """Read a case saved by `save` (or a replay file: its "case" entry)."""
        data = json.loads(Path(path).read_text())
        if "case" in data and isinstance(data["case"], dict):
            data = data["case"]
        return cls.from_dict(data)

    def short(self) -> str:
        """A compact one-line description for test ids and report rows."""
        parts = [self.variant, self.dtype, f"seed={self.seed}"]
        for f in fields(self)[3:]:
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={_to_plain(value)}")
        return " ".join(str(p) for p in parts)


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value


__all__ = [
    "DISTRIBUTIONS",
    "LAYOUTS",
    "MASK_KINDS",
    "VARIANTS",
    "Case",
    "dtype_from_name",
    "dtype_name",
]
