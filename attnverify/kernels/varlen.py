"""Variable-length (packed) flash attention in Triton, forward and backward.

Layouts: q (Tq, Hq, D); k, v (Tk, Hk, D); sequences delimited by cu_seqlens (N+1,) int32, as in
vision encoders (one sequence per image frame, see `cu_seqlens_from_grid_thw`), on q's device or
on the CPU (no device sync to read them). float16, bfloat16, float32 (IEEE, never TF32); any D
in [8, 256] with D % 8 == 0 (non-powers of two as a power-of-two tile plus a small remainder
tile). lse in natural log, float32.
Oracle: `attnverify.reference.varlen`. Core: `attnverify.kernels._flash` (IS_VARLEN=True).
"""

from __future__ import annotations

import contextvars
import functools

import torch

from attnverify.kernels._common import call_directly
from attnverify.kernels._flash import (
    FlashConfig,
    FlashProblem,
    VarlenLengths,
    flash_backward,
    flash_forward,
)
from attnverify.kernels._gate import enforce_verified
from attnverify.reference.varlen import cu_seqlens_from_grid_thw
from attnverify.validation import check_varlen_layout, check_varlen_values, resolve_scale

# What `varlen_attention` hands the op call it is making: (q, k, v, cu_seqlens_q, cu_seqlens_k,
# max_seqlen_q, max_seqlen_k), the five tensors' layout already checked. The op's schema has no
# maxima; its implementation checks these when it reads cu_seqlens, and skips the layout
# checks, for the very same tensor objects. Set only around that one eager call;
# torch.compile'd graphs, opcheck and the backward check the layout and lengths alone.
_HANDED: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "attnverify_varlen_handed", default=None
)

# ------------------------------------------------------------------ launchers


def _problem(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool,
    scale: float,
) -> FlashProblem:
    """Validate what needs no tensor values (unless `varlen_attention` just did, for these very
    tensors) and describe the call for the flash core. The values of cu_seqlens (and the
    maxima `varlen_attention` was given) are checked by `FlashProblem.lengths`, the one host
    read, which the launchers make right before their launch: a device sync unless cu_seqlens
    are on the CPU, after which the GPU idles until the launch."""
    handed = _HANDED.get()
    tensors = (q, k, v, cu_seqlens_q, cu_seqlens_k)
    mine = handed is not None and all(a is b for a, b in zip(handed[:5], tensors, strict=True))
    if not mine:
        check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k)
    max_q, max_k = handed[5:] if mine else (None, None)

    @functools.cache
    def lengths() -> VarlenLengths:
        meta = check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale)
        return VarlenLengths.from_seqlens(meta.seqlens_q, meta.seqlens_k)

    return FlashProblem(
        is_varlen=True,
        batch=1,
        num_q_heads=q.shape[1],
        num_kv_heads=k.shape[1],
        causal=causal,
        scale=resolve_scale(scale, q.shape[-1]),
        lengths=lengths,
    )


def varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool,
    scale: float,
    *,
    config: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out (Tq, Hq, D) in q's dtype and lse (Hq, Tq) float32; `config` pins the launch."""
    problem = _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    return flash_forward(q, k, v, problem, config=config)


def varlen_backward(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool,
    scale: float,
    *,
    config_dkdv: FlashConfig | None = None,
    config_dq: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv in the input dtypes (dk, dv summed over each query-head group)."""
    problem = _problem(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    dq, dk, dv, _ = flash_backward(
        dout, q, k, v, out, lse, dlse, problem, config_dkdv=config_dkdv, config_dq=config_dq
    )
    return dq, dk, dv


# ------------------------------------------------------------------ custom op


@torch.library.custom_op("attnverify::varlen_fwd", mutates_args=())
def _varlen_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)


@_varlen_fwd_op.register_fake
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale):
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.custom_op("attnverify::varlen_bwd", mutates_args=())
def _varlen_bwd_op(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return varlen_backward(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, scale)


@_varlen_bwd_op.register_fake
def _varlen_bwd_fake(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, scale):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.causal = causal
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dq, dk, dv = _varlen_bwd_op(
        dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, ctx.causal, ctx.scale
    )
    return dq, dk, dv, None, None, None, None


_varlen_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ public function


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Flash attention within each packed sequence; no token attends across a boundary.

    Sequence n holds query rows cu_seqlens_q[n]:cu_seqlens_q[n+1] and key rows
    cu_seqlens_k[n]:cu_seqlens_k[n+1]; zero-length sequences are allowed. Scores are
    `scale * <q_i, k_j>`. Query head h reads kv head h // G with G = Hq // Hk (GQA / MQA).
    Causal is bottom-right aligned per sequence: query i sees key j iff j <= i + Lk_n - Lq_n::

        Lq=2, Lk=4:  q0: x x x .      Lq=4, Lk=2:  q0: . .   (empty row)
                     q1: x x x x                   q1: . .   (empty row)
                                                   q2: x .
                                                   q3: x x

    Differentiable in q, k, v (a torch custom op `attnverify::varlen_fwd` with a fake
    implementation, so `torch.compile` traces it without graph breaks; an eager call that
    needs no gradient runs the op's implementation directly, sparing the op's dispatch, see
    `_common.call_directly`). The backward is deterministic: no atomics; dk, dv are summed
    over each query-head group.

    Args:
        q: (Tq, Hq, D) float16 | bfloat16 | float32; any strides. D in [8, 256], D % 8 == 0.
        k: (Tk, Hk, D), q's dtype, Hq % Hk == 0; any strides.
        v: (Tk, Hk, D), q's dtype; any strides.
        cu_seqlens_q: (N+1,) int32 on q's device or on the CPU: starts at 0, non-decreasing,
            ends at Tq. The call reads the values on the host to validate them and plan its
            grid: from q's device that read is a device sync (on an H200 it cost 3-17% of
            the time of 8k-20k-token forwards, ci/notes_flash.md); a CPU tensor (e.g. built
            from a host `grid_thw` once per batch, shared by every layer) needs none.
        cu_seqlens_k: (N+1,) int32 on q's device or on the CPU, likewise: starts at 0,
            non-decreasing, ends at Tk.
        max_seqlen_q, max_seqlen_k: upper bounds on the lengths, checked (None: computed).
        causal: bottom-right causal per sequence.
        scale: multiplies q.k; default 1 / sqrt(D) with the caller's D.
        return_lse: also return the logsumexp of each row.

    Returns:
        out (Tq, Hq, D) in q's dtype; with return_lse also lse (Hq, Tq) float32 in natural log,
        `lse[h, i] = log(sum_j exp(s[i, j]))`. Rows with no visible key (Lk_n = 0, or causally
        hidden) give out exactly 0, lse -inf and zero gradients, never NaN.

    Raises:
        TypeError, ValueError: before any launch, from `attnverify.validation`, for inputs
            outside the rules above (dtypes, ranks, head dim, Hq % Hk, cu_seqlens, maxima).
        UnverifiedKernelError: ATTNVERIFY_REQUIRE_VERIFIED=1 and no verification record for this
            kernel source on this device (the message names the `attnverify verify` command).
    """
    if torch.compiler.is_compiling():
        scale = resolve_scale(scale, q.shape[-1])
        out, lse = _varlen_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
        return (out, lse) if return_lse else out
    # no values read here: the op reads cu_seqlens once, right before its launch
    check_varlen_layout(q, k, v, cu_seqlens_q, cu_seqlens_k)
    scale = resolve_scale(scale, q.shape[-1])
    enforce_verified("varlen", q.device)
    token = _HANDED.set((q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    try:
        if call_directly(q, k, v, cu_seqlens_q, cu_seqlens_k):  # the op's own implementation
            out, lse = varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
        else:
            out, lse = _varlen_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    finally:
        _HANDED.reset(token)
    return (out, lse) if return_lse else out


__all__ = ["cu_seqlens_from_grid_thw", "varlen_attention", "varlen_backward", "varlen_forward"]
