"""Verification targets: the implementations `check` (and `attnverify verify --target`) can test.

`resolve_target(name, variant)` returns a callable with the variant's public signature (that of
`attnverify.reference.<function>` minus `compute_dtype`), returning what a kernel returns:
`out` in the input dtype (fp8: `out_dtype`; merge: the dtype of the partial outputs) and `lse`
in float32.

Targets:

| name | what it is | variants |
|---|---|---|
| `attnverify` | our Triton kernels, `attnverify.kernels.<function>` (imported on resolve) | all |
| `reference` | the float64 oracle rounded to kernel dtypes: a correct implementation | all |
| `torch-sdpa` | `F.scaled_dot_product_attention`; varlen as one SDPA call per sequence | gqa, varlen |
| `torch-flex` | `flex_attention`; mask as `mask_mod`, bias as `score_mod`, varlen as a document mask | gqa, varlen |
| `torch-varlen` | `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10, CUDA flash attention) | varlen |
| `module:function` | any importable callable, e.g. `my_pkg.attn:fused_attention` | all |

Adapters translate *calling conventions* only (layouts, how a mask or causal alignment is
spelled, lse layout); they never patch results. Where a third-party target's semantics differ
from DESIGN.md (an empty row giving NaN, a top-left causal mask, a missing feature), the
verifier reports the difference: that is a finding about the target, not something to hide.
A variant a target cannot express raises `ValueError` at resolve time, naming target, variant
and the reason.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from attnverify import reference
from attnverify.reference._common import causal_visible, expand_heads
from attnverify.validation import check_gqa_inputs, check_varlen_inputs

VARIANT_FUNCTIONS = {
    "varlen": "varlen_attention",
    "gqa": "gqa_attention",
    "fp8": "fp8_attention",
    "paged": "paged_attention",
    "merge": "merge_attention_states",
}
TARGET_NAMES = (
    "attnverify",
    "reference",
    "torch-sdpa",
    "torch-flex",
    "torch-varlen",
    "module:function",
)

Target = Callable[..., Any]


def resolve_target(name: str, variant: str) -> Target:
    """The implementation called `name` for `variant`, as a callable with the variant's signature.

    Args:
        name: one of `TARGET_NAMES`, or "package.module:function" (any importable callable;
            the part after ":" may be a dotted attribute path such as "Kernels.forward").
        variant: "varlen" | "gqa" | "fp8" | "paged" | "merge".

    Returns:
        A callable taking the arguments of `attnverify.reference.<function>` for the variant
        (without `compute_dtype`) and returning out (and lse with `return_lse=True`; merge
        always returns both) in kernel dtypes.

    Raises:
        ValueError: unknown variant or target name (the message lists the valid ones), a
            variant the target cannot express, a target this torch/device lacks, or a
            "module:function" that does not import or is not callable (with the cause).
    """
    if variant not in VARIANT_FUNCTIONS:
        raise ValueError(f"variant must be one of {', '.join(VARIANT_FUNCTIONS)}; got {variant!r}")
    builders = {
        "attnverify": _attnverify_target,
        "reference": _reference_target,
        "torch-sdpa": _sdpa_target,
        "torch-flex": _flex_target,
        "torch-varlen": _torch_varlen_target,
    }
    if name in builders:
        target = builders[name](variant)
    elif ":" in name:
        target = _module_target(name)
    else:
        raise ValueError(
            f"unknown target {name!r}; valid targets: {', '.join(TARGET_NAMES)} "
            "(module:function names any importable callable, e.g. 'my_pkg.attn:attention')"
        )
    return target


def _unsupported(target: str, variant: str, why: str) -> ValueError:
    return ValueError(f"target {target!r} cannot run variant {variant!r}: {why}")


# ---------------------------------------------------------------- attnverify / module:function


def _attnverify_target(variant: str) -> Target:
    """Our kernel for `variant`, imported now (compiles nothing until the first call)."""
    fn_name = VARIANT_FUNCTIONS[variant]
    kernels = importlib.import_module("attnverify.kernels")
    try:
        return getattr(kernels, fn_name)
    except (ImportError, AttributeError) as exc:
        raise _unsupported(
            "attnverify", variant, f"attnverify.kernels.{fn_name} is not importable ({exc!r})"
        ) from exc


def _module_target(name: str) -> Target:
    """`package.module:attr.path` imported and checked callable."""
    module_name, _, attr_path = name.partition(":")
    if not module_name or not attr_path:
        raise ValueError(
            f"target {name!r} must look like 'package.module:function' (both parts non-empty)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"target {name!r}: cannot import module {module_name!r}: {exc!r}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(a for a in dir(obj) if not a.startswith("_"))
            raise ValueError(
                f"target {name!r}: {type(obj).__name__} {getattr(obj, '__name__', obj)!r} "
                f"has no attribute {part!r}; it has: {', '.join(public[:20]) or 'nothing public'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"target {name!r} is a {type(obj).__name__}, not a callable")
    return obj


# ---------------------------------------------------------------- reference


def _reference_target(variant: str) -> Target:
    """The float64 oracle with outputs rounded as a kernel returns them (out dtype, lse float32).

    It is the most accurate implementation possible in the output dtype, so it must pass every
    case: `check("gqa", resolve_target("reference", "gqa"))` tests the verifier itself.
    Gradients flow through the rounding (`Tensor.to` is differentiable).
    """
    oracle = getattr(reference, VARIANT_FUNCTIONS[variant])

    def target(*args: Any, **kwargs: Any) -> Any:
        result = oracle(*args, **kwargs)
        if variant == "merge":
            out_dtype = _arg(args, kwargs, 0, "out").dtype
        elif variant == "fp8":
            out_dtype = kwargs.get("out_dtype", torch.bfloat16)
        else:
            out_dtype = _arg(args, kwargs, 0, "q").dtype
        if isinstance(result, tuple):
            out, lse = result
            return out.to(out_dtype), lse.to(torch.float32)
        return result.to(out_dtype)

    target.__doc__ = f"attnverify.reference.{oracle.__name__} in float64, rounded to kernel dtypes."
    return target


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


# ---------------------------------------------------------------- shared by the torch adapters


def _visibility(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor | None:
    """Bool (Bm, Hm, Lq, Lk) visibility from the gqa mask and bottom-right causal, heads -> Hq."""
    visible = expand_heads(mask, q.shape[1], k.shape[1])
    if causal:
        c = causal_visible(q.shape[2], k.shape[2], q.device)
        visible = c[None, None] if visible is None else visible & c
    return visible


def _lse(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None,
    visible: torch.Tensor | None,
) -> torch.Tensor:
    """Natural-log logsumexp of each row, float32, from the scores the adapter passed on.

    Used where a torch API returns no lse (SDPA): computed by the adapter from the same
    scores, so it checks the adapter's translation of mask/bias/causal, not the torch kernel.
    """
    kf = expand_heads(k, q.shape[1], k.shape[1]).float()
    s = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + expand_heads(bias, q.shape[1], k.shape[1]).float()
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(s, dim=-1)


def _varlen_by_sequence(
    attend: Callable[..., Any],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens_q: tuple[int, ...],
    seqlens_k: tuple[int, ...],
    *,
    causal: bool,
    scale: float,
    return_lse: bool,
) -> Any:
    """Varlen as one gqa-layout call per sequence: (L, H, D) slices -> (1, H, L, D)."""
    outs, lses = [], []
    cu_q = [0, *itertools.accumulate(seqlens_q)]
    cu_k = [0, *itertools.accumulate(seqlens_k)]
    for n, (lq, lk) in enumerate(zip(seqlens_q, seqlens_k, strict=True)):
        if lq == 0:
            continue
        qs, ks, vs = (
            x[start : start + length].transpose(0, 1).unsqueeze(0)
            for x, start, length in ((q, cu_q[n], lq), (k, cu_k[n], lk), (v, cu_k[n], lk))
        )
        out, lse = attend(qs, ks, vs, causal=causal, scale=scale, return_lse=True)
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    if not outs:
        out = q.new_zeros(q.shape)
        lse = q.new_full((q.shape[1], 0), float("-inf"), dtype=torch.float32)
    else:
        out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------- torch-sdpa


def _sdpa_target(variant: str) -> Target:
    if variant == "gqa":
        return sdpa_gqa_attention
    if variant == "varlen":
        return sdpa_varlen_attention
    raise _unsupported(
        "torch-sdpa",
        variant,
        "scaled_dot_product_attention takes dense float q/k/v only (no fp8 descales, paged "
        "caches or state merging); supported variants: gqa, varlen",
    )


def _sdpa_supports_gqa() -> bool:
    return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def sdpa_gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """gqa through `F.scaled_dot_product_attention`.

    Translation: GQA via `enable_gqa=True` (older torch: K/V `repeat_interleave`d to Hq);
    a kv-headed mask/bias is mapped to query heads (h reads h // G); mask and bias become
    one `attn_mask` (bool when there is no bias, else the bias in q's dtype with -inf where
    hidden: SDPA takes no float32 bias beside float16 q); causal uses `is_causal` only when
    Lq == Lk and nothing else is masked (SDPA's is_causal is top-left aligned), otherwise
    an explicit bottom-right mask. SDPA returns no lse: with `return_lse` it is computed by
    the adapter from the same scores in float32 (see `_lse`), so lse checks the adapter.
    Empty rows are whatever SDPA gives (torch 2.13 CPU: 0, not NaN).
    """
    scale = check_gqa_inputs(q, k, v, mask, bias, scale)
    hq, hk, lq, lk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    is_causal = causal and mask is None and bias is None and lq == lk
    visible = None if is_causal else _visibility(q, k, mask, causal)
    attn_mask = visible
    if bias is not None:
        attn_mask = expand_heads(bias, hq, hk).to(q.dtype)
        if visible is not None:
            attn_mask = attn_mask.masked_fill(~visible, float("-inf"))
    if _sdpa_supports_gqa():
        extra = {"enable_gqa": hq != hk}
        ke, ve = k, v
    else:
        extra = {}
        ke, ve = expand_heads(k, hq, hk), expand_heads(v, hq, hk)
    out = F.scaled_dot_product_attention(
        q, ke, ve, attn_mask=attn_mask, is_causal=is_causal, scale=scale, **extra
    )
    if not return_lse:
        return out
    if is_causal:
        visible = _visibility(q, k, None, True)
    return out, _lse(q, k, scale, bias, visible)


def sdpa_varlen_attention(
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
) -> Any:
    """varlen as one `sdpa_gqa_attention` call per sequence (bottom-right causal per sequence).

    SDPA has no packed layout; slicing per sequence is what models without a varlen kernel
    do. A sequence with Lk = 0 is passed to SDPA as is (its empty rows show what SDPA does).
    """
    meta = check_varlen_inputs(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale
    )
    return _varlen_by_sequence(
        sdpa_gqa_attention,
        q,
        k,
        v,
        meta.seqlens_q,
        meta.seqlens_k,
        causal=causal,
        scale=meta.scale,
        return_lse=return_lse,
    )


# ---------------------------------------------------------------- torch-flex


def _flex_target(variant: str) -> Target:
    try:
        importlib.import_module("torch.nn.attention.flex_attention")
    except ImportError as exc:
        raise _unsupported(
            "torch-flex",
            variant,
            f"torch {torch.__version__} has no torch.nn.attention.flex_attention (torch >= 2.5)",
        ) from exc
    if variant == "gqa":
        return flex_gqa_attention
    if variant == "varlen":
        return flex_varlen_attention
    raise _unsupported(
        "torch-flex",
        variant,
        "flex_attention takes dense float q/k/v (no fp8 descales, paged caches or state "
        "merging in its public API); supported variants: gqa, varlen",
    )


def _flex_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask_mod: Callable[..., torch.Tensor] | None,
    score_mod: Callable[..., torch.Tensor] | None,
    batch: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One flex_attention call returning (out, lse float32); refuses CPU autograd up front."""
    from torch.nn.attention import flex_attention as flex

    if q.device.type == "cpu" and any(x.requires_grad for x in (q, k, v)):
        raise ValueError(
            f"target 'torch-flex': FlexAttention has no backward on CPU (torch {torch.__version__}); "
            "verify it with grads=False on CPU, or on a CUDA device"
        )
    block_mask = None
    if mask_mod is not None:
        block_mask = flex.create_block_mask(
            mask_mod, batch, q.shape[1], q.shape[2], k.shape[2], device=q.device
        )
    kwargs: dict[str, Any] = {
        "score_mod": score_mod,
        "block_mask": block_mask,
        "scale": scale,
        "enable_gqa": q.shape[1] != k.shape[1],
    }
    if hasattr(flex, "AuxRequest"):
        out, aux = flex.flex_attention(q, k, v, return_aux=flex.AuxRequest(lse=True), **kwargs)
        lse = aux.lse
    else:
        out, lse = flex.flex_attention(q, k, v, return_lse=True, **kwargs)
    return out, lse.float()


def flex_gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> Any:
    """gqa through `flex_attention` (eager; on CPU the unfused reference path, forward only).

    Translation: `enable_gqa` for Hq != Hk; the mask (kv-headed -> query heads, broadcast
    dims expanded as views) and bottom-right causal become a `mask_mod`; the bias becomes a
    `score_mod` adding `bias[b, h, i, j]` in the score's dtype; lse is flex's own (float32).
    Flex raises for Lk = 0 (torch 2.13); that is reported as the target's error.
    """
    scale = check_gqa_inputs(q, k, v, mask, bias, scale)
    b, hq, lq, _ = q.shape
    hk, lk = k.shape[1], k.shape[2]
    visible = _visibility(q, k, mask, causal)
    mask_mod = score_mod = None
    if visible is not None:
        full = visible.expand(b, hq, lq, lk)

        def mask_mod(bi: Any, h: Any, i: Any, j: Any) -> torch.Tensor:
            return full[bi, h, i, j]

    if bias is not None:
        full_bias = expand_heads(bias, hq, hk).expand(b, hq, lq, lk)

        def score_mod(score: torch.Tensor, bi: Any, h: Any, i: Any, j: Any) -> torch.Tensor:
            return score + full_bias[bi, h, i, j].to(score.dtype)

    out, lse = _flex_call(q, k, v, mask_mod=mask_mod, score_mod=score_mod, batch=b, scale=scale)
    return (out, lse) if return_lse else out


def flex_varlen_attention(
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
) -> Any:
    """varlen through one `flex_attention` call over the packed tokens with a document mask.

    q (Tq, Hq, D) becomes (1, Hq, Tq, D); query i and key j attend iff they belong to the
    same sequence n (and, causal, pos_k <= pos_q + Lk_n - Lq_n: bottom-right per sequence).
    """
    meta = check_varlen_inputs(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale
    )
    doc_q, pos_q = _documents(meta.seqlens_q, q.device)
    doc_k, pos_k = _documents(meta.seqlens_k, q.device)
    shift = torch.tensor(meta.seqlens_k, device=q.device) - torch.tensor(
        meta.seqlens_q, device=q.device
    )

    def mask_mod(bi: Any, h: Any, i: Any, j: Any) -> torch.Tensor:
        same = doc_q[i] == doc_k[j]
        if causal:
            same = same & (pos_k[j] <= pos_q[i] + shift[doc_q[i]])
        return same

    out, lse = _flex_call(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        mask_mod=mask_mod,
        score_mod=None,
        batch=1,
        scale=meta.scale,
    )
    out = out[0].transpose(0, 1)
    return (out, lse[0]) if return_lse else out


def _documents(lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per packed token: its sequence index and its position inside that sequence."""
    doc = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    starts = torch.tensor([0, *itertools.accumulate(lengths)][:-1], device=device)
    pos = torch.arange(doc.numel(), device=device) - starts[doc]
    return doc, pos


# ---------------------------------------------------------------- torch-varlen


def _torch_varlen_target(variant: str) -> Target:
    try:
        from torch.nn.attention import varlen as torch_varlen
    except ImportError as exc:
        raise _unsupported(
            "torch-varlen",
            variant,
            f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10)",
        ) from exc
    if not hasattr(torch_varlen, "varlen_attn"):
        raise _unsupported(
            "torch-varlen", variant, f"torch {torch.__version__} lacks varlen.varlen_attn"
        )
    if variant != "varlen":
        raise _unsupported("torch-varlen", variant, "varlen_attn is packed (varlen) attention only")
    if not torch.cuda.is_available():
        raise _unsupported(
            "torch-varlen", variant, "varlen_attn runs flash attention on CUDA only; no CUDA device"
        )
    return torch_varlen_attention


def torch_varlen_attention(
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
) -> Any:
    """varlen through `torch.nn.attention.varlen.varlen_attn` (flash attention, CUDA only).

    Translation: max lengths computed when None; causal as `window_size=(-1, 0)` (newer
    torch) or `is_causal=True` (torch 2.10); GQA via `enable_gqa` where the signature has it;
    lse from `return_aux=AuxRequest(lse=True)` (or `return_lse`), transposed to (Hq, Tq)
    when torch returns (Tq, Hq). Flash attention's own alignment and empty-row behaviour are
    not changed: the verifier reports them.
    """
    from torch.nn.attention import varlen as torch_varlen

    meta = check_varlen_inputs(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale
    )
    if q.device.type != "cuda":
        raise ValueError(
            "target 'torch-varlen': varlen_attn runs flash attention on CUDA only; "
            f"got q on {q.device}"
        )
    params = inspect.signature(torch_varlen.varlen_attn).parameters
    kwargs: dict[str, Any] = {"scale": meta.scale}
    if causal:
        if "window_size" in params:
            kwargs["window_size"] = (-1, 0)
        else:
            kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" not in params:
            raise ValueError(
                f"target 'torch-varlen': this torch's varlen_attn has no enable_gqa; "
                f"got Hq={q.shape[1]} != Hk={k.shape[1]}"
            )
        kwargs["enable_gqa"] = True
    if return_lse:
        if "return_aux" in params:
            kwargs["return_aux"] = torch_varlen.AuxRequest(lse=True)
        else:
            kwargs["return_lse"] = True
    result = torch_varlen.varlen_attn(
        q, k, v, cu_seqlens_q, cu_seqlens_k, meta.max_seqlen_q, meta.max_seqlen_k, **kwargs
    )
    if not return_lse:
        return result
    out, lse = result
    lse = getattr(lse, "lse", lse)
    if tuple(lse.shape) == (q.shape[0], q.shape[1]):
        lse = lse.transpose(0, 1)
    return out, lse.float()


__all__ = [
    "TARGET_NAMES",
    "VARIANT_FUNCTIONS",
    "flex_gqa_attention",
    "flex_varlen_attention",
    "resolve_target",
    "sdpa_gqa_attention",
    "sdpa_varlen_attention",
    "torch_varlen_attention",
]
