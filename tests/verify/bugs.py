"""A catalog of planted bugs: attention implementations that are wrong the way shipped kernels were.

Each entry is a callable with its variant's public signature that behaves like a kernel (out in
the input dtype or `out_dtype`, lse float32, computed in the input precision by the oracle with
`compute_dtype` set, or in float32 where real kernels keep softmax in float32) plus exactly one
defect. The first docstring line names the real bug class. `tests/verify/test_planted_bugs.py`
requires `check(bug.variant, bug)` to flag every one of them within the default `ci` budget.

Gradient bugs keep the forward exact and corrupt only the backward, through
`torch.autograd.Function`s (`_GroupFirstHead`, `_ExpandFirstOnly`, `_ValueFrom`) or gradient hooks
on private views of the inputs (never on the caller's tensors).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnverify import reference
from attnverify.reference._common import NEG_INF, attend, causal_visible, expand_heads
from attnverify.reference.paged import gather_kv, split_bounds
from attnverify.validation import resolve_scale

LN2 = math.log(2.0)
FULLY_MASKED_FILL = -1e30


@dataclass(frozen=True)
class PlantedBug:
    """One planted bug: `fn` has the public signature of `variant`; `dtype` is the input dtype
    its test draws (the cheapest realistic one: float16, or float32 where the bug only shows in
    IEEE fp32); `grads` says whether the defect lives in the backward."""

    name: str
    variant: str
    fn: Callable[..., Any]
    dtype: str
    grads: bool

    @property
    def bug_class(self) -> str:
        """The first docstring line: the real bug class the entry reproduces."""
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


BUGS: list[PlantedBug] = []


def planted(
    variant: str, *, dtype: str = "float16", grads: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a planted bug of `variant`."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        BUGS.append(PlantedBug(fn.__name__, variant, fn, dtype, grads))
        return fn

    return register


# ---------------------------------------------------------------- kernel-like building blocks


def _finish(out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype, return_lse: bool) -> Any:
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
    return _finish(out, lse, q.dtype, return_lse)


def _visible(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor | None:
    """Bool visibility from the mask (heads mapped h -> h // G) and bottom-right causal."""
    visible = expand_heads(mask, q.shape[1], k.shape[1])
    if causal:
        c = causal_visible(q.shape[2], k.shape[2], q.device)[None, None]
        visible = c if visible is None else visible & c
    return visible


def _and(mask: torch.Tensor | None, extra: torch.Tensor) -> torch.Tensor:
    return extra if mask is None else mask & extra


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to TF32's 10-bit mantissa (what a TF32 tensor core reads)."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x).detach()


def _as_if_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Read x's storage from its offset with contiguous strides, as a kernel that ignores them."""
    if x.is_contiguous():
        return x
    strides = [1] * x.dim()
    for i in range(x.dim() - 2, -1, -1):
        strides[i] = strides[i + 1] * x.shape[i + 1]
    return torch.as_strided(x, x.shape, strides, x.storage_offset())


class _ValueFrom(torch.autograd.Function):
    """Forward value of `value`, gradient into `surrogate`: a backward that recomputes wrongly."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class _GroupFirstHead(torch.autograd.Function):
    """repeat_interleave over heads (Hk -> Hq) whose backward keeps head 0 of each group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.groups = groups
        return x.repeat_interleave(groups, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = ctx.groups
        return grad.unflatten(1, (-1, g))[:, :, 0], None


class _ExpandFirstOnly(torch.autograd.Function):
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


def _with_grad_hook(x: torch.Tensor, hook: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A private alias of x whose incoming gradient passes through `hook`."""
    if not x.requires_grad:
        return x
    alias = x.view_as(x)
    alias.register_hook(hook)
    return alias


# ---------------------------------------------------------------- gqa: forward


@planted("gqa")
def gqa_head_modulo(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """GQA mapping h % Hk instead of h // G (query heads interleaved across kv heads)."""
    hq, hk = q.shape[1], k.shape[1]
    idx = torch.arange(hq, device=q.device) % hk
    return gqa_kernel(
        q,
        k[:, idx],
        v[:, idx],
        mask=expand_heads(mask, hq, hk),
        bias=expand_heads(bias, hq, hk),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_causal_top_left(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Causal mask aligned top-left (j <= i) when Lq != Lk, instead of bottom-right."""
    lq, lk = q.shape[2], k.shape[2]
    if causal and lq != lk:
        top_left = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()[None, None]
        mask, causal = _and(mask, top_left), False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_decode_top_left(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Decode fast path (Lq = 1) applies top-left causal: the one query sees only key 0."""
    if causal and q.shape[2] == 1:
        first = torch.arange(k.shape[2], device=q.device)[None, None, None] == 0
        mask, causal = _and(mask, first), False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_small_lq_ignores_causal(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Small-Lq (<= 16, speculative decode) path dispatched to a decode kernel that drops causal."""
    if q.shape[2] <= 16:
        causal = False
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_bias_scaled(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """Bias multiplied by the softmax scale (scale folded after adding the bias)."""
    s = resolve_scale(scale, q.shape[-1])
    bias = None if bias is None else bias * s
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa")
def gqa_bias_after_softmax(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Bias added to the probabilities after softmax instead of to the scores."""
    out, lse = reference.gqa_attention(
        q, k, v, mask=mask, causal=causal, scale=scale, return_lse=True, compute_dtype=q.dtype
    )
    if bias is not None:
        visible = _visible(q, k, mask, causal)
        hq, hk = q.shape[1], k.shape[1]
        p_bias = expand_heads(bias, hq, hk).to(q.dtype)
        if visible is not None:
            p_bias = torch.where(visible, p_bias, 0.0)
        out = out + torch.matmul(p_bias.expand(*q.shape[:3], k.shape[2]), expand_heads(v, hq, hk))
    return _finish(out, lse, q.dtype, return_lse)


@planted("gqa")
def gqa_kv_mask_head0(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """Kv-headed mask (Hm == Hk < Hq) read from head 0 for every head (broadcast assumed)."""
    if mask is not None and mask.shape[1] == k.shape[1] != q.shape[1]:
        mask = mask[:, :1]
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_kv_bias_head_modulo(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Kv-headed bias (Hm == Hk < Hq) read at head h % Hk instead of h // G."""
    hq, hk = q.shape[1], k.shape[1]
    if bias is not None and bias.shape[1] == hk != hq:
        bias = bias[:, torch.arange(hq, device=q.device) % hk]
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_empty_rows_nan(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Rows with no visible key give NaN (0 / 0 in the final normalisation)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("gqa")
def gqa_empty_rows_mean_v(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Hidden keys get a large finite negative instead of -inf: empty rows give mean(V)."""
    visible = _visible(q, k, mask, causal)
    if visible is not None:
        hidden = torch.where(visible, 0.0, FULLY_MASKED_FILL)
        bias = hidden if bias is None else expand_heads(bias, q.shape[1], k.shape[1]) + hidden
    return gqa_kernel(
        q, k, v, bias=bias, scale=scale, return_lse=return_lse, compute_dtype=torch.float32
    )


@planted("gqa")
def gqa_drop_last_key(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """Key loop bound off by one (j < Lk - 1): the last key is never attended."""
    lk = k.shape[2]
    not_last = (torch.arange(lk, device=q.device) < lk - 1)[None, None, None]
    return gqa_kernel(
        q,
        k,
        v,
        mask=_and(mask, not_last),
        bias=bias,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_phantom_keys(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """No bounds mask on the last partial 32-key tile: padded keys (zeros) enter the softmax."""
    lk = k.shape[2]
    pad = -lk % 32
    if pad == 0 or lk == 0:
        return gqa_kernel(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
        )
    s = resolve_scale(scale, q.shape[-1])
    visible = _visible(q, k, mask, causal)
    if visible is not None:
        visible = visible.expand(*visible.shape[:-1], lk)
        phantom = torch.ones(*visible.shape[:-1], pad, dtype=torch.bool, device=q.device)
        if causal:
            phantom = torch.zeros_like(phantom)
        visible = torch.cat([visible, phantom], dim=-1)
    if bias is not None:
        bias = torch.nn.functional.pad(bias, (0, pad if bias.shape[-1] > 1 else 0))
    zeros = k.new_zeros(*k.shape[:2], pad, k.shape[3])
    return gqa_kernel(
        q,
        torch.cat([k, zeros], dim=2),
        torch.cat([v, zeros], dim=2),
        mask=visible,
        bias=bias,
        scale=s,
        return_lse=return_lse,
    )


@planted("gqa")
def gqa_no_max_subtraction(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Softmax without subtracting the row max: exp overflows (inf / inf) on peaked scores."""
    s = resolve_scale(scale, q.shape[-1])
    hq, hk = q.shape[1], k.shape[1]
    kf, vf = (expand_heads(x, hq, hk).float() for x in (k, v))
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * s
    if bias is not None:
        scores = scores + expand_heads(bias, hq, hk).float()
    visible = _visible(q, k, mask, causal)
    p = torch.exp(scores)
    if visible is not None:
        p = torch.where(visible, p, 0.0)
    l = p.sum(-1, keepdim=True)
    has_key = torch.ones_like(l, dtype=torch.bool)
    if visible is not None:
        has_key = visible.expand_as(p).any(-1, keepdim=True)
    out = torch.where(has_key, torch.matmul(p, vf) / l, 0.0)
    lse = torch.where(has_key, torch.log(l), NEG_INF).squeeze(-1)
    return _finish(out, lse, q.dtype, return_lse)


@planted("gqa")
def gqa_scale_off_one_percent(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Softmax scale off by 1% (a rounded constant, e.g. 0.088 for 1/sqrt(128))."""
    s = resolve_scale(scale, q.shape[-1]) * 1.01
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa")
def gqa_default_scale_padded_dim(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Default scale 1/sqrt(BLOCK_D) from the padded head dim (next power of two), not D."""
    if scale is None:
        scale = 1.0 / math.sqrt(1 << (q.shape[-1] - 1).bit_length())
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_lse_log2(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """LSE returned in base 2 (the kernel's exp2 domain) instead of natural log."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    return (out, lse / LN2) if return_lse else out


@planted("gqa")
def gqa_strides_ignored(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Strides ignored: q, k, v read from their storage as if contiguous (a raw .view)."""
    q, k, v = (_as_if_contiguous(x) for x in (q, k, v))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_storage_offset_ignored(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Storage offset ignored: the allocation's base pointer used instead of data_ptr()."""
    q, k, v = (
        torch.as_strided(x, x.shape, x.stride(), 0) if x.storage_offset() else x for x in (q, k, v)
    )
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa")
def gqa_padded_head_dim_garbage(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Head dim padded to a multiple of 16 without a load mask: the pad reads the next row."""
    d = q.shape[-1]
    pad = -d % 16
    s = resolve_scale(scale, d)
    if pad:
        q, k, v = (torch.cat([x, _next_row(x)[..., :pad]], dim=-1) for x in (q, k, v))
    out, lse = gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=True)
    out = out[..., :d]
    return (out, lse) if return_lse else out


def _next_row(x: torch.Tensor) -> torch.Tensor:
    """For each row of x (..., D), the row that follows it in contiguous memory (wrapping)."""
    rows = x.reshape(-1, x.shape[-1])
    return torch.roll(rows, -1, dims=0).reshape(x.shape)


@planted("gqa")
def gqa_last_partial_query_tile(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Last partial 16-row query tile stores each row's result one row up (pointer off by one)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    lq = q.shape[2]
    start = lq - lq % 16
    if lq > 16 and start < lq:
        rows = torch.arange(lq, device=q.device)
        src = torch.where(rows >= start, torch.clamp(rows + 1, max=lq - 1), rows)
        out, lse = out[:, :, src], lse[:, :, src]
    return (out, lse) if return_lse else out


@planted("gqa", dtype="float32")
def gqa_fp32_as_tf32(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """float32 inputs multiplied in TF32 (10-bit mantissa) instead of IEEE fp32."""
    if q.dtype == torch.float32:
        q, k, v = (_round_tf32(x) for x in (q, k, v))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


# ---------------------------------------------------------------- gqa: backward


@planted("gqa", grads=True)
def gqa_dkdv_one_head(q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False):
    """dK/dV taken from the first query head of each group instead of summed over the group."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k, v = (_GroupFirstHead.apply(x, hq // hk) for x in (k, v))
        mask, bias = expand_heads(mask, hq, hk), expand_heads(bias, hq, hk)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dbias_not_reduced(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """dbias not reduced over broadcast dims: the gradient of index 0 (e.g. batch 0) only."""
    if bias is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        bias = _ExpandFirstOnly.apply(expand_heads(bias, q.shape[1], k.shape[1]), full)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dbias_kv_group_first_head(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Kv-headed dbias from the first query head of each group, not summed over the group."""
    hq, hk = q.shape[1], k.shape[1]
    if bias is not None and bias.shape[1] == hk != hq:
        bias = _GroupFirstHead.apply(bias, hq // hk)
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("gqa", grads=True)
def gqa_dq_missing_scale(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """dQ = dS @ K without the softmax scale factor."""
    s = resolve_scale(scale, q.shape[-1])
    q = _with_grad_hook(q, lambda g: g / s)
    return gqa_kernel(q, k, v, mask=mask, bias=bias, causal=causal, scale=s, return_lse=return_lse)


@planted("gqa", grads=True)
def gqa_backward_ignores_causal(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Backward recomputes P without the causal mask (the mask applied in the forward only)."""
    out, lse = gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
    )
    if causal:
        surrogate = gqa_kernel(q, k, v, mask=mask, bias=bias, scale=scale)
        out = _ValueFrom.apply(out.detach(), surrogate)
    return (out, lse) if return_lse else out


@planted("gqa", grads=True)
def gqa_empty_rows_nan_grad(
    q, k, v, *, mask=None, bias=None, causal=False, scale=None, return_lse=False
):
    """Backward of an empty row gives NaN dQ (exp(s - lse) with lse = -inf)."""
    with torch.no_grad():
        _, lse0 = gqa_kernel(
            q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=True
        )
    empty = torch.isneginf(lse0)[..., None]
    q = _with_grad_hook(q, lambda g: torch.where(empty, float("nan"), g))
    return gqa_kernel(
        q, k, v, mask=mask, bias=bias, causal=causal, scale=scale, return_lse=return_lse
    )


# ---------------------------------------------------------------- varlen


def seq_ranges(cu: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sequence from a cu_seqlens tensor."""
    values = cu.tolist()
    return list(itertools.pairwise(values))


def varlen_by_ranges(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges_q: list[tuple[int, int]],
    ranges_k: list[tuple[int, int]],
    *,
    causal: bool,
    scale: float | None,
    return_lse: bool,
    key_mask: Callable[[int, int, int, int], torch.Tensor | None] = lambda *_: None,
) -> Any:
    """A varlen "kernel" over explicit (start, end) ranges per sequence (bugs bend the ranges).

    `key_mask(n, lq, lk, start_q)` may return an extra (1, 1, Lq, Lk) mask for sequence n.
    Rows of q outside every range are left 0 (an unwritten output).
    """
    s = resolve_scale(scale, q.shape[-1])
    out = q * 0  # an unwritten output, still in the graph as a kernel's output is
    lse_t = torch.full((q.shape[0], q.shape[1]), NEG_INF, dtype=torch.float32, device=q.device)
    outs, lses, rows = [], [], []
    for n, ((qa, qb), (ka, kb)) in enumerate(zip(ranges_q, ranges_k, strict=True)):
        if qb <= qa:
            continue
        qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q[qa:qb], k[ka:kb], v[ka:kb]))
        o, l = gqa_kernel(
            qs,
            ks,
            vs,
            mask=key_mask(n, qb - qa, kb - ka, qa),
            causal=causal,
            scale=s,
            return_lse=True,
        )
        outs.append(o[0].transpose(0, 1))
        lses.append(l[0])
        rows.append(torch.arange(qa, qb, device=q.device))
    if outs:
        idx = torch.cat(rows)
        out = out.index_put((idx,), torch.cat(outs))
        lse_t = lse_t.index_put((idx,), torch.cat(lses, dim=1).transpose(0, 1))
    lse = lse_t.transpose(0, 1)
    return (out, lse) if return_lse else out


@planted("varlen")
def varlen_leak_next_key(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Key bound off by one (j <= end): each sequence also attends the next sequence's first key."""
    ranges_k = [(a, min(b + 1, k.shape[0])) for a, b in seq_ranges(cu_seqlens_k)]
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        ranges_k,
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("varlen")
def varlen_drop_last_key(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Per-sequence key loop bound off by one: each sequence's last key is never attended."""

    def not_last(n: int, lq: int, lk: int, start_q: int) -> torch.Tensor:
        return (torch.arange(lk, device=q.device) < lk - 1)[None, None, None]

    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
        key_mask=not_last,
    )


@planted("varlen")
def varlen_keys_use_cu_seqlens_q(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """cu_seqlens_q used for the key ranges too (a self-attention-only assumption)."""
    ranges = seq_ranges(cu_seqlens_q)
    return varlen_by_ranges(
        q, k, v, ranges, ranges, causal=causal, scale=scale, return_lse=return_lse
    )


@planted("varlen")
def varlen_causal_packed_positions(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Causal compares packed positions (k_start + j <= q_start + i), not per-sequence bottom-right."""
    ranges_q, ranges_k = seq_ranges(cu_seqlens_q), seq_ranges(cu_seqlens_k)
    if not causal:
        return varlen_by_ranges(
            q, k, v, ranges_q, ranges_k, causal=False, scale=scale, return_lse=return_lse
        )

    def packed(n: int, lq: int, lk: int, start_q: int) -> torch.Tensor:
        i = torch.arange(lq, device=q.device)[:, None] + start_q
        j = torch.arange(lk, device=q.device)[None, :] + ranges_k[n][0]
        return (j <= i)[None, None]

    return varlen_by_ranges(
        q,
        k,
        v,
        ranges_q,
        ranges_k,
        causal=False,
        scale=scale,
        return_lse=return_lse,
        key_mask=packed,
    )


@planted("varlen")
def varlen_last_sequence_skipped(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Grid over N - 1 sequences (cu_seqlens.numel() - 2): the last sequence is never written."""
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q)[:-1],
        seq_ranges(cu_seqlens_k)[:-1],
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


@planted("varlen")
def varlen_empty_sequence_nan(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Queries of a sequence with no visible key (Lk = 0, causal Lq > Lk) give NaN."""
    out, lse = varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=True,
    )
    out = torch.where(torch.isneginf(lse).transpose(0, 1)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("varlen")
def varlen_lse_token_major(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """lse written token-major (Tq, Hq) into the (Hq, Tq) output (wrong layout, right shape)."""
    out, lse = varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=True,
    )
    lse = lse.transpose(0, 1).reshape(lse.shape)
    return (out, lse) if return_lse else out


@planted("varlen", grads=True)
def varlen_dkdv_one_head(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Varlen GQA backward: dK/dV from the first query head of each group only."""
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k, v = (
            _GroupFirstHead.apply(x.transpose(0, 1)[None], hq // hk)[0].transpose(0, 1)
            for x in (k, v)
        )
    return varlen_by_ranges(
        q,
        k,
        v,
        seq_ranges(cu_seqlens_q),
        seq_ranges(cu_seqlens_k),
        causal=causal,
        scale=scale,
        return_lse=return_lse,
    )


# ---------------------------------------------------------------- paged


def paged_kernel(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
    num_splits: int | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> Any:
    """A correct paged "kernel": the oracle in the input precision, rounded like a kernel."""
    out, lse = reference.paged_attention(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
        compute_dtype=q.dtype,
    )
    return _finish(out, lse, q.dtype, return_lse)


def paged_split_kernel(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None,
    k_descale: torch.Tensor | None,
    v_descale: torch.Tensor | None,
    num_splits: int | None,
    kv_layout: str,
    return_lse: bool,
    merge: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    chunk: Callable[[int, int], tuple[int, int]] = lambda lo, hi: (lo, hi),
) -> Any:
    """Flash-decoding in float32: per-split partial states merged by `merge` (bugs swap it).

    `chunk(lo, hi)` may bend each split's key range.
    """
    s = resolve_scale(scale, q.shape[-1])
    lq = q.shape[2]
    outs, lses = [], []
    for b, seq_len in enumerate(seq_lens.tolist()):
        k = gather_kv(k_cache, block_tables[b], seq_len, kv_layout).float()
        v = gather_kv(v_cache, block_tables[b], seq_len, kv_layout).float()
        if k_descale is not None:
            k = k * k_descale.reshape(-1, 1, 1)
        if v_descale is not None:
            v = v * v_descale.reshape(-1, 1, 1)
        visible = causal_visible(lq, seq_len, q.device)
        parts = []
        for lo, hi in split_bounds(seq_len, num_splits or 1):
            lo, hi = chunk(lo, hi)
            parts.append(
                attend(
                    q[b : b + 1],
                    k[None, :, lo:hi],
                    v[None, :, lo:hi],
                    scale=s,
                    mask=visible[None, None, :, lo:hi],
                    compute_dtype=torch.float32,
                )
            )
        o, l = merge(torch.stack([p[0] for p in parts], -2), torch.stack([p[1] for p in parts], -1))
        outs.append(o)
        lses.append(l)
    return _finish(torch.cat(outs), torch.cat(lses), q.dtype, return_lse)


def merge_correct(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's merge in float32 (what a correct split-KV kernel does)."""
    return reference.merge_attention_states(out, lse, compute_dtype=torch.float32)


def _merge_plain_average(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return out.mean(-2), torch.logsumexp(lse, -1)


def _merge_unguarded(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty split's partial is acc / l = 0 / 0 = NaN, and the merge multiplies it by 0."""
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    m = lse.amax(-1, keepdim=True)
    w = torch.exp(lse - m)
    total = w.sum(-1, keepdim=True)
    return (w[..., None] * out).sum(-2) / total, (m + torch.log(total)).squeeze(-1)


@planted("paged")
def paged_blocks_in_physical_order(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """A request's blocks read in ascending physical order instead of block-table order."""
    bs = k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2]
    tables = block_tables.clone()
    for b, n in enumerate(seq_lens.tolist()):
        used = -(-n // bs)
        tables[b, :used] = tables[b, :used].sort().values
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_block_table_ignored(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Block table ignored: request b's logical block i read at physical block b * max_blocks + i."""
    b_, max_blocks = block_tables.shape
    num_blocks = k_cache.shape[0]
    ids = torch.arange(b_ * max_blocks, device=q.device).reshape(b_, max_blocks) % num_blocks
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        ids.to(torch.int32),
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_reads_past_seq_len(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Whole last block read: slots past seq_len (stale or NaN) enter the softmax."""
    bs = k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2]
    rounded = (-(-seq_lens // bs) * bs).to(torch.int32)
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        rounded,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_multi_token_ignores_causal(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Speculative decode (Lq > 1) without causal: every new token sees the later new tokens."""
    b, hq, lq, d = q.shape
    out, lse = paged_kernel(
        q.transpose(1, 2).reshape(b * lq, hq, 1, d),
        k_cache,
        v_cache,
        block_tables.repeat_interleave(lq, dim=0),
        seq_lens.repeat_interleave(lq),
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
    )
    out = out.reshape(b, lq, hq, d).transpose(1, 2)
    lse = lse.reshape(b, lq, hq).transpose(1, 2)
    return (out, lse) if return_lse else out


@planted("paged")
def paged_hnd_read_as_nhd(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """HND cache indexed with NHD strides (layout flag ignored)."""
    if kv_layout == "HND":
        nb, hk, bs, d = k_cache.shape
        k_cache, v_cache = (c.reshape(nb, bs, hk, d) for c in (k_cache, v_cache))
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout="NHD",
        return_lse=return_lse,
    )


@planted("paged")
def paged_zero_length_nan(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Rows with no visible key (seq_len = 0, or hidden new tokens) give NaN (0 / 0)."""
    out, lse = paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=True,
    )
    out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out)
    return (out, lse) if return_lse else out


@planted("paged")
def paged_splits_plain_average(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Split-KV partial outputs merged by a plain average instead of lse weights."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=_merge_plain_average,
    )


@planted("paged")
def paged_empty_split_nan(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Empty splits (more splits than keys, hidden rows) merged unguarded: NaN from -inf lse."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=_merge_unguarded,
    )


@planted("paged")
def paged_split_drops_last_key(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """Split bounds off by one: each split's last key is dropped."""
    return paged_split_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
        merge=merge_correct,
        chunk=lambda lo, hi: (lo, max(lo, hi - 1)),
    )


@planted("paged")
def paged_missing_v_descale(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """fp8 cache: v_descale never applied (out in quantized units)."""
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=None if v_descale is None else torch.ones_like(v_descale),
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


@planted("paged")
def paged_per_tensor_descale(
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    *,
    scale=None,
    k_descale=None,
    v_descale=None,
    num_splits=None,
    kv_layout="NHD",
    return_lse=False,
):
    """fp8 cache: per-head (Hk,) k descale read as per-tensor (element 0 for every head)."""
    if k_descale is not None and k_descale.dim() == 1:
        k_descale = k_descale[0]
    return paged_kernel(
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        scale=scale,
        k_descale=k_descale,
        v_descale=v_descale,
        num_splits=num_splits,
        kv_layout=kv_layout,
        return_lse=return_lse,
    )


# ---------------------------------------------------------------- merge


def _merge_finish(
    out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return out.to(dtype), lse.to(torch.float32)


@planted("merge")
def merge_plain_average(out, lse):
    """Partial states merged by a plain average of the outputs (lse weights ignored)."""
    o, l = _merge_plain_average(out.float(), lse.float())
    return _merge_finish(o, l, out.dtype)


@planted("merge")
def merge_all_inf_nan(out, lse):
    """No guard for all -inf lse: exp(-inf - (-inf)) = NaN for rows no split saw."""
    m = lse.float().amax(-1, keepdim=True)
    w = torch.exp(lse.float() - m)
    w = torch.where(torch.isneginf(lse), 0.0, w)
    total = w.sum(-1, keepdim=True)
    o = torch.where(w[..., None] > 0, w[..., None] * out.float(), 0.0).sum(-2) / total
    return _merge_finish(o, (m + torch.log(total)).squeeze(-1), out.dtype)


@planted("merge")
def merge_inf_split_poisons(out, lse):
    """A -inf split's garbage output multiplied by weight 0 (0 * NaN = NaN) instead of skipped."""
    ref_out, ref_lse = reference.merge_attention_states(out, lse, compute_dtype=torch.float32)
    w = torch.exp(lse.float() - ref_lse[..., None].float())
    o = (w[..., None] * out.float()).sum(-2)
    o = torch.where(torch.isneginf(ref_lse)[..., None], ref_out, o)
    return _merge_finish(o, ref_lse, out.dtype)


@planted("merge")
def merge_lse_max(out, lse):
    """Merged lse = max of the split lse (logsumexp forgotten); out correct."""
    o, _ = reference.merge_attention_states(out, lse, compute_dtype=torch.float32)
    return _merge_finish(o, lse.float().amax(-1), out.dtype)


@planted("merge")
def merge_exp2_on_natural_lse(out, lse):
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


# ---------------------------------------------------------------- fp8


def fp8_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor,
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    return_lse: bool = False,
) -> Any:
    """A correct fp8 "kernel": the oracle in float32, out rounded to out_dtype."""
    out, lse = reference.fp8_attention(
        q,
        k,
        v,
        q_descale,
        k_descale,
        v_descale,
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=True,
        compute_dtype=torch.float32,
    )
    return _finish(out, lse, out_dtype, return_lse)


@planted("fp8", dtype="float8_e4m3fn")
def fp8_missing_v_descale(
    q,
    k,
    v,
    q_descale,
    k_descale,
    v_descale,
    *,
    causal=False,
    scale=None,
    out_dtype=torch.bfloat16,
    return_lse=False,
):
    """v_descale never applied: the output stays in V's quantized units."""
    return fp8_kernel(
        q,
        k,
        v,
        q_descale,
        k_descale,
        torch.ones_like(v_descale),
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


@planted("fp8", dtype="float8_e4m3fn")
def fp8_per_tensor_descale(
    q,
    k,
    v,
    q_descale,
    k_descale,
    v_descale,
    *,
    causal=False,
    scale=None,
    out_dtype=torch.bfloat16,
    return_lse=False,
):
    """Per-(batch, kv head) descales read as per-tensor: element [0, 0] used for every head."""
    q_descale, k_descale, v_descale = (
        d.reshape(-1)[0] if d.dim() else d for d in (q_descale, k_descale, v_descale)
    )
    return fp8_kernel(
        q,
        k,
        v,
        q_descale,
        k_descale,
        v_descale,
        causal=causal,
        scale=scale,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


@planted("fp8", dtype="float8_e4m3fn")
def fp8_causal_top_left(
    q,
    k,
    v,
    q_descale,
    k_descale,
    v_descale,
    *,
    causal=False,
    scale=None,
    out_dtype=torch.bfloat16,
    return_lse=False,
):
    """fp8 path with top-left causal when Lq != Lk (alignment copied from an old kernel)."""
    lq, lk = q.shape[2], k.shape[2]
    if not (causal and lq != lk):
        return fp8_kernel(
            q,
            k,
            v,
            q_descale,
            k_descale,
            v_descale,
            causal=causal,
            scale=scale,
            out_dtype=out_dtype,
            return_lse=return_lse,
        )
    from attnverify.reference.fp8 import dequantize

    qd, kd, vd = (
        dequantize(x, d, torch.float32) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale))
    )
    top_left = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()[None, None]
    out, lse = attend(
        qd,
        kd,
        vd,
        scale=resolve_scale(scale, q.shape[-1]),
        mask=top_left,
        compute_dtype=torch.float32,
    )
    return _finish(out, lse, out_dtype, return_lse)


__all__ = ["BUGS", "PlantedBug", "fp8_kernel", "gqa_kernel", "paged_kernel", "planted"]
