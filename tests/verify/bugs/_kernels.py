"""Kernel-like building blocks of the planted bugs: a correct gqa kernel in the input precision,
rounding like a kernel, and autograd Functions that corrupt only a backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnverify import reference
from attnverify.reference._common import causal_visible, expand_heads


def finish(out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype, return_lse: bool) -> Any:
    """Round like a kernel: out to `dtype`, lse to float32."""
    out = out.to(dtype)
    return (out, lse.to(torch.float32)) if return_lse else out


def gqa_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> Any:
    """A correct gqa "kernel": the oracle in the input precision, rounded like a kernel."""
    out, lse = reference.gqa_attention(
        q,
        k,
        v,
        mask=mask,
        bias=bias,
        causal=causal,
        scale=scale,
        return_lse=True,
        compute_dtype=compute_dtype or q.dtype,
    )
    return finish(out, lse, q.dtype, return_lse)


def visible_keys(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor | None:
    """Bool visibility from the mask (heads mapped h -> h // G) and bottom-right causal."""
    visible = expand_heads(mask, q.shape[1], k.shape[1])
    if causal:
        c = causal_visible(q.shape[2], k.shape[2], q.device)[None, None]
        visible = c if visible is None else visible & c
    return visible


def and_mask(mask: torch.Tensor | None, extra: torch.Tensor) -> torch.Tensor:
    return extra if mask is None else mask & extra


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to TF32's 10-bit mantissa (what a TF32 tensor core reads)."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x).detach()


def as_if_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Read x's storage from its offset with contiguous strides, as a kernel that ignores them."""
    if x.is_contiguous():
        return x
    strides = [1] * x.dim()
    for i in range(x.dim() - 2, -1, -1):
        strides[i] = strides[i + 1] * x.shape[i + 1]
    return torch.as_strided(x, x.shape, strides, x.storage_offset())


class ValueFrom(torch.autograd.Function):
    """Forward value of `value`, gradient into `surrogate`: a backward that recomputes wrongly."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class GroupFirstHead(torch.autograd.Function):
    """repeat_interleave over heads (Hk -> Hq) whose backward keeps head 0 of each group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.groups = groups
        return x.repeat_interleave(groups, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = ctx.groups
        return grad.unflatten(1, (-1, g))[:, :, 0], None


class ExpandFirstOnly(torch.autograd.Function):
    """Expand to `shape`; backward takes index 0 of each broadcast dim instead of summing."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.broadcast = [d for d in range(x.dim()) if x.shape[d] == 1 and shape[d] > 1]
        return x.expand(shape).clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        for d in ctx.broadcast:
            grad = grad.narrow(d, 0, 1)
        return grad, None


def with_grad_hook(x: torch.Tensor, hook: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A private alias of x whose incoming gradient passes through `hook`."""
    if not x.requires_grad:
        return x
    alias = x.view_as(x)
    alias.register_hook(hook)
    return alias
