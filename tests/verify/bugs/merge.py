"""Planted merge_attention_states bugs: weights, -inf splits, lse."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnverify import reference
from attnverify.reference._common import NEG_INF

from ._registry import planted
from .paged import average_states


def _merge_finish(
    out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return out.to(dtype), lse.to(torch.float32)


@planted("merge")
def merge_plain_average(out: Tensor, lse: Tensor) -> Any:
    """Partial states merged by a plain average of the outputs (lse weights ignored)."""
    o, l = average_states(out.float(), lse.float())
    return _merge_finish(o, l, out.dtype)


@planted("merge")
def merge_all_inf_nan(out: Tensor, lse: Tensor) -> Any:
    """No guard for all -inf lse: exp(-inf - (-inf)) = NaN for rows no split saw."""
    m = lse.float().amax(-1, keepdim=True)
    w = torch.exp(lse.float() - m)
    w = torch.where(torch.isneginf(lse), 0.0, w)
    total = w.sum(-1, keepdim=True)
    o = torch.where(w[..., None] > 0, w[..., None] * out.float(), 0.0).sum(-2) / total
    return _merge_finish(o, (m + torch.log(total)).squeeze(-1), out.dtype)


@planted("merge")
def merge_inf_split_poisons(out: Tensor, lse: Tensor) -> Any:
    """A -inf split's garbage output multiplied by weight 0 (0 * NaN = NaN) instead of skipped."""
    ref_out, ref_lse = reference.merge_attention_states(out, lse, compute_dtype=torch.float32)
    w = torch.exp(lse.float() - ref_lse[..., None].float())
    o = (w[..., None] * out.float()).sum(-2)
    o = torch.where(torch.isneginf(ref_lse)[..., None], ref_out, o)
    return _merge_finish(o, ref_lse, out.dtype)


@planted("merge")
def merge_lse_max(out: Tensor, lse: Tensor) -> Any:
    """Merged lse = max of the split lse (logsumexp forgotten); out correct."""
    o, _ = reference.merge_attention_states(out, lse, compute_dtype=torch.float32)
    return _merge_finish(o, lse.float().amax(-1), out.dtype)


@planted("merge")
def merge_exp2_on_natural_lse(out: Tensor, lse: Tensor) -> Any:
    """Weights 2^(lse_s - max) on natural-log lse (exp2 kernel without the log2(e) factor)."""
    lf = lse.float()
    m = torch.where(torch.isneginf(lf.amax(-1, keepdim=True)), 0.0, lf.amax(-1, keepdim=True))
    w = torch.exp2(lf - m)
    total = w.sum(-1, keepdim=True)
    has = total > 0
    o = torch.where(w[..., None] > 0, w[..., None] * out.float(), 0.0).sum(-2)
    o = o / torch.where(has, total, 1.0)
    l = torch.where(has, torch.log(torch.where(has, total, 1.0)) + m, NEG_INF).squeeze(-1)
    return _merge_finish(o, l, out.dtype)


@planted("merge")
def merge_no_max_subtraction(out: Tensor, lse: Tensor) -> Any:
    """Weights exp(lse_s) / sum exp(lse) without subtracting the max: overflows for large lse."""
    lf = lse.float()
    w = torch.exp(lf)
    total = w.sum(-1, keepdim=True)
    o = torch.where(w[..., None] > 0, w[..., None] * out.float(), 0.0).sum(-2) / total
    o = torch.where(total > 0, o, 0.0)
    return _merge_finish(o, torch.log(total).squeeze(-1), out.dtype)
