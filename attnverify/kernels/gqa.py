"""GQA flash attention with a broadcast boolean mask and an additive bias, in Triton.

Layouts: q (B, Hq, Lq, D); k, v (B, Hk, Lk, D); mask, bias (Bm, Hm, Lqm, Lkm) broadcast.
float16, bfloat16, float32 (IEEE, never TF32); any D in [8, 256] with D % 8 == 0. Forward and
backward (dq, dk, dv, dbias), deterministic; KV tiles whose mask block is all False are skipped.
lse in natural log, float32. Oracle: `attnverify.reference.gqa`. Core: `attnverify.kernels._flash`.
"""

from __future__ import annotations

import torch

from attnverify.kernels._common import call_directly
from attnverify.kernels._flash import FlashConfig, FlashProblem, flash_backward, flash_forward
from attnverify.kernels._gate import enforce_verified
from attnverify.validation import check_gqa_inputs, resolve_scale

# ------------------------------------------------------------------ launchers


def _problem(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> FlashProblem:
    return FlashProblem(
        is_varlen=False,
        batch=q.shape[0],
        num_q_heads=q.shape[1],
        num_kv_heads=k.shape[1],
        causal=causal,
        scale=scale,
        seqlen_q=q.shape[2],
        seqlen_k=k.shape[2],
    )


def gqa_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
    scale: float,
    *,
    config: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out (B, Hq, Lq, D) in q's dtype and lse (B, Hq, Lq) float32; `config` pins the launch."""
    return flash_forward(
        q, k, v, _problem(q, k, causal, scale), mask=mask, bias=bias, config=config
    )


def gqa_backward(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
    scale: float,
    need_dbias: bool,
    *,
    config_dkdv: FlashConfig | None = None,
    config_dq: FlashConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv (input dtypes, dk/dv summed over groups) and dbias (bias's shape) or None."""
    return flash_backward(
        dout, q, k, v, out, lse, dlse, _problem(q, k, causal, scale), mask=mask, bias=bias,
        need_dbias=need_dbias, config_dkdv=config_dkdv, config_dq=config_dq,
    )  # fmt: skip


# ------------------------------------------------------------------ custom op


@torch.library.custom_op("attnverify::gqa_fwd", mutates_args=())
def _gqa_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_gqa_inputs(q, k, v, mask, bias, scale)
    return gqa_forward(q, k, v, mask, bias, causal, scale)


@_gqa_fwd_op.register_fake
def _gqa_fwd_fake(q, k, v, mask, bias, causal, scale):
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.custom_op("attnverify::gqa_bwd", mutates_args=())
def _gqa_bwd_op(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    causal: bool,
    scale: float,
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dbias = gqa_backward(
        dout, dlse, q, k, v, out, lse, mask, bias, causal, scale, need_dbias
    )
    return dq, dk, dv, dbias if dbias is not None else q.new_empty(0)


@_gqa_bwd_op.register_fake
def _gqa_bwd_fake(dout, dlse, q, k, v, out, lse, mask, bias, causal, scale, need_dbias):
    grads = tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
    dbias = torch.empty_like(bias) if need_dbias else q.new_empty(0)
    return (*grads, dbias)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, mask, bias, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, bias)
    ctx.causal = causal
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, mask, bias = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias = _gqa_bwd_op(
        dout, dlse, q, k, v, out, lse, mask, bias, ctx.causal, ctx.scale, need_dbias
    )
    return dq, dk, dv, None, dbias if need_dbias else None, None, None


_gqa_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ public function


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query flash attention: softmax(scale * q k^T + bias, masked) v.

    Scores `s[i, j] = scale * <q_i, k_j> + bias[i, j]` (the bias is not scaled); masked and
    causally hidden keys get -inf. Query head h reads kv head h // G with G = Hq // Hk.
    Causal with Lq != Lk is bottom-right aligned: query i sees key j iff j <= i + Lk - Lq::

        Lq=2, Lk=4:  q0: x x x .      Lq=4, Lk=2:  q0: . .   (empty row)
                     q1: x x x x                   q1: . .   (empty row)
                                                   q2: x .
                                                   q3: x x

    KV tiles whose mask block is all False are skipped (no loads, no math): a block-sparse
    mask costs time in proportion to its live tiles. Differentiable in q, k, v and bias (a
    torch custom op `attnverify::gqa_fwd` with a fake implementation, so `torch.compile`
    traces it without graph breaks; an eager call that needs no gradient runs the op's
    implementation directly, see `_common.call_directly`). The backward is deterministic (no
    atomics): outputs, lse, dq, dk, dv and dbias are bitwise identical across runs.

    Args:
        q: (B, Hq, Lq, D) float16 | bfloat16 | float32; any strides. D in [8, 256], D % 8 == 0.
        k: (B, Hk, Lk, D), q's dtype, Hq % Hk == 0; any strides.
        v: (B, Hk, Lk, D), q's dtype; any strides.
        mask: (Bm, Hm, Lqm, Lkm) bool, True = attend; Bm in {1, B}, Hm in {1, Hk, Hq},
            Lqm in {1, Lq}, Lkm in {1, Lk} (size-1 dims broadcast). A kv-headed mask
            (Hm == Hk) is read by query head h at h // G.
        bias: (Bm, Hm, Lqm, Lkm) q's dtype or float32, the same broadcast rules as mask. Its
            gradient has the bias's own shape: dS summed over every broadcast dim, and over
            the query-head group for a kv-headed bias.
        causal: bottom-right causal masking, combinable with mask and bias.
        scale: multiplies q.k; default 1 / sqrt(D) with the caller's D.
        return_lse: also return the logsumexp of each row.

    Returns:
        out (B, Hq, Lq, D) in q's dtype; with return_lse also lse (B, Hq, Lq) float32 in
        natural log, `lse = log(sum_j exp(s[i, j]))`. A row with no visible key (fully masked,
        causally hidden, Lk = 0) gives out exactly 0, lse -inf and zero gradients, never NaN.

    Raises:
        TypeError, ValueError: before any launch, from `attnverify.validation`, for inputs
            outside the rules above (dtypes, ranks, head dim, Hq % Hk, mask/bias shapes).
        UnverifiedKernelError: ATTNVERIFY_REQUIRE_VERIFIED=1 and no verification record for this
            kernel source on this device (the message names the `attnverify verify` command).
    """
    if torch.compiler.is_compiling():
        scale = resolve_scale(scale, q.shape[-1])
    else:
        scale = check_gqa_inputs(q, k, v, mask, bias, scale)
        enforce_verified("gqa", q.device)
    if call_directly(q, k, v, mask, bias):  # the op's own implementation, inputs checked
        out, lse = gqa_forward(q, k, v, mask, bias, causal, scale)
    else:
        out, lse = _gqa_fwd_op(q, k, v, mask, bias, causal, scale)
    return (out, lse) if return_lse else out


__all__ = ["gqa_attention", "gqa_backward", "gqa_forward"]
