"""The baselines `attnverify bench` times beside our kernels, per variant.

| variant | baselines |
|---|---|
| gqa | SDPA backends flash, cuDNN, efficient, math (when its scores fit `MATH_MAX_SCORES`), compiled FlexAttention |
| varlen | SDPA per sequence (what models without a varlen kernel do), torch `varlen_attn`, compiled FlexAttention with a document mask |
| fp8 | SDPA flash on the same tensors in bfloat16 (what fp8 replaces), compiled FlexAttention on the fp8 tensors |
| merge | the same formula in eager torch (float32) |
| paged | SDPA cuDNN and flash on the same KV gathered into contiguous (B, Hk, L, D) tensors (Lq = 1, 16-bit caches, equal lengths; the gather is not timed) |

Backward (the bench shapes whose spec says `bench_backward`; `backward_baselines`): gqa, SDPA
flash on the same q, k, v without mask or bias (`sdpa-flash-no-bias` when the shape has a
bias: the issue's reference) and SDPA cuDNN / efficient with the bias; varlen, SDPA flash on
the same tokens as a dense equal-length batch (`sdpa-flash-dense`, equal lengths only) and
torch `varlen_attn`. Each times the backward alone (`backward_call_of`).

Every call is made with `return_lse=False` (SDPA has no lse; asking an adapter for one would
time an extra score matmul). FlexAttention's block mask is built once, outside the timing, as
a model reuses it across layers. Building a baseline never raises: an unavailable one is an
`Impl` with `fn=None` and the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

MATH_MAX_SCORES = 2**30


@dataclass
class Impl:
    """One implementation to time at one shape.

    Attributes:
        name: "attnverify", "sdpa-flash", "flex-compiled", ...
        fn: zero-argument callable running it on the shape's inputs (None: unavailable).
        context: a context manager factory held around the timing (SDPA backend choice).
        reason: why it is unavailable (when fn is None).
    """

    name: str
    fn: Callable[[], Any] | None
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    reason: str = ""


def call_of(spec: Any, fn: Callable[..., Any], inputs: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument call of `fn` on `inputs` in the spec's convention, without lse."""
    args = [inputs[n] for n in spec.positional]
    kwargs = {k: v for k, v in inputs.items() if k not in spec.positional}
    if spec.returns_lse_flag:
        kwargs["return_lse"] = False
    return lambda: fn(*args, **kwargs)


def backward_call_of(
    spec: Any, fn: Callable[..., Any], inputs: dict[str, Any]
) -> Callable[[], Any]:
    """A zero-argument call of the backward alone of `fn` at `inputs` (the spec's convention):
    the first call runs the forward with the spec's differentiable inputs as fresh leaves and
    keeps its graph and a random output gradient; every call (the first too) then runs
    `torch.autograd.grad` of out over those leaves, graph retained. A training step's backward,
    its forward aside."""
    state: dict[str, Any] = {}

    def call() -> Any:
        if not state:
            leaves = {
                n: inputs[n].detach().requires_grad_()
                for n in spec.grad_inputs
                if isinstance(inputs.get(n), torch.Tensor)
            }
            out = call_of(spec, fn, {**inputs, **leaves})()
            out = out[0] if isinstance(out, tuple) else out
            state.update(out=out, leaves=list(leaves.values()), dout=torch.randn_like(out))
        return torch.autograd.grad(state["out"], state["leaves"], state["dout"], retain_graph=True)

    return call


def _sdpa_backends() -> list[tuple[str, Any]]:
    from torch.nn.attention import SDPBackend

    names = [
        ("sdpa-flash", "FLASH_ATTENTION"),
        ("sdpa-cudnn", "CUDNN_ATTENTION"),
        ("sdpa-efficient", "EFFICIENT_ATTENTION"),
        ("sdpa-math", "MATH"),
    ]
    return [
        (label, getattr(SDPBackend, attr)) for label, attr in names if hasattr(SDPBackend, attr)
    ]


def _sdpa_backend(label: str) -> Any | None:
    """The SDPA backend `label` names ("sdpa-flash", ...), None where this torch lacks it."""
    return dict(_sdpa_backends()).get(label)


def _in_backend(backend: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    from torch.nn.attention import sdpa_kernel

    return lambda: sdpa_kernel([backend])


def _gqa_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    from attnverify.verify.targets import sdpa_gqa_attention

    call = call_of(spec, sdpa_gqa_attention, inputs)
    scores = case.batch * case.heads_q * case.lq * case.lk
    for label, backend in _sdpa_backends():
        if label == "sdpa-math" and scores > MATH_MAX_SCORES:
            yield Impl(label, None, reason=f"{scores} scores > {MATH_MAX_SCORES} (memory)")
        else:
            yield Impl(label, call, _in_backend(backend))
    yield _flex_gqa(case, inputs)


# Every bench shape compiles flex_attention anew (dynamic=False): a bench run holds more
# shapes than dynamo's default of 8 recompiles per function, past which it silently runs the
# eager (unfused, ~60x slower) flex_attention and the baseline row would be wrong.
FLEX_RECOMPILE_LIMIT = 256


def _flex_module() -> Any:
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention import flex_attention as flex

    # the names torch 2.4-2.6 have (later versions keep them as aliases of recompile_limit)
    limit = dynamo_config.cache_size_limit
    dynamo_config.cache_size_limit = max(limit, FLEX_RECOMPILE_LIMIT)
    limit = dynamo_config.accumulated_cache_size_limit
    dynamo_config.accumulated_cache_size_limit = max(limit, FLEX_RECOMPILE_LIMIT)
    return flex


def _flex_gqa(case: Any, inputs: dict[str, Any]) -> Impl:
    """Compiled FlexAttention: bottom-right causal and the mask as a block mask built once,
    the bias as a score_mod reading the (broadcast) bias tensor."""
    try:
        flex = _flex_module()
    except ImportError as exc:
        return Impl("flex-compiled", None, reason=str(exc))
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    b, hq, lq, _ = q.shape
    hk, lk = k.shape[1], k.shape[2]
    mask, bias, causal = inputs.get("mask"), inputs.get("bias"), inputs.get("causal", False)
    shift = lk - lq
    full_mask = None if mask is None else _heads_to_q(mask, hq, hk).expand(b, hq, lq, lk)

    def mask_mod(bi: Any, h: Any, i: Any, j: Any) -> Any:
        keep = j <= i + shift if causal else j >= 0
        return keep & full_mask[bi, h, i, j] if full_mask is not None else keep

    block_mask = None
    if causal or full_mask is not None:
        block_mask = flex.create_block_mask(mask_mod, b, hq, lq, lk, device=q.device)
    score_mod = None
    if bias is not None:
        full_bias = _heads_to_q(bias, hq, hk).expand(b, hq, lq, lk)

        def score_mod(score: Any, bi: Any, h: Any, i: Any, j: Any) -> Any:
            return score + full_bias[bi, h, i, j].to(score.dtype)

    compiled = torch.compile(flex.flex_attention, dynamic=False)
    kwargs = {"score_mod": score_mod, "block_mask": block_mask, "scale": inputs.get("scale")}
    kwargs["enable_gqa"] = hq != hk
    return Impl("flex-compiled", lambda: compiled(q, k, v, **kwargs))


def _heads_to_q(x: torch.Tensor, hq: int, hk: int) -> torch.Tensor:
    """A (.., Hm, ..) mask/bias with Hm == Hk != Hq mapped to query heads (h reads h // G)."""
    if x.shape[1] == hk and hk != hq:
        return x.repeat_interleave(hq // hk, dim=1)
    return x


def _varlen_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    from attnverify.verify.targets import sdpa_varlen_attention

    yield Impl("sdpa-per-sequence", call_of(spec, sdpa_varlen_attention, inputs))
    yield _torch_varlen(spec, inputs, call_of)
    yield _flex_varlen(case, inputs)


def _torch_varlen(
    spec: Any, inputs: dict[str, Any], make_call: Callable[..., Callable[[], Any]]
) -> Impl:
    """torch `varlen_attn` through `make_call` (`call_of` or `backward_call_of`), or why it is
    unavailable."""
    from attnverify.verify.targets import resolve_target

    try:
        torch_varlen = resolve_target("torch-varlen", "varlen")
    except ValueError as exc:
        return Impl("torch-varlen", None, reason=str(exc))
    return Impl("torch-varlen", make_call(spec, torch_varlen, inputs))


def _flex_varlen(case: Any, inputs: dict[str, Any]) -> Impl:
    """Compiled FlexAttention over the packed tokens with a document mask built once."""
    try:
        flex = _flex_module()
    except ImportError as exc:
        return Impl("flex-compiled", None, reason=str(exc))
    q, k, v = (inputs[n].transpose(0, 1).unsqueeze(0) for n in ("q", "k", "v"))
    device = q.device
    doc_q = _documents(case.seqlens_q, device)
    doc_k = _documents(case.seqlens_k, device)
    causal = inputs.get("causal", False)
    pos_q = torch.arange(doc_q.numel(), device=device) - _starts(case.seqlens_q, device)[doc_q]
    pos_k = torch.arange(doc_k.numel(), device=device) - _starts(case.seqlens_k, device)[doc_k]
    shift = torch.tensor(case.seqlens_k, device=device) - torch.tensor(
        case.seqlens_q, device=device
    )

    def mask_mod(bi: Any, h: Any, i: Any, j: Any) -> Any:
        same = doc_q[i] == doc_k[j]
        return same & (pos_k[j] <= pos_q[i] + shift[doc_q[i]]) if causal else same

    block_mask = flex.create_block_mask(
        mask_mod, 1, q.shape[1], q.shape[2], k.shape[2], device=device
    )
    compiled = torch.compile(flex.flex_attention, dynamic=False)
    kwargs = {"block_mask": block_mask, "scale": inputs.get("scale")}
    kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
    return Impl("flex-compiled", lambda: compiled(q, k, v, **kwargs))


def _documents(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )


def _starts(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0, *lengths], device=device).cumsum(0)[:-1]


def _fp8_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    """SDPA flash in bfloat16 on the same (dequantized) tensors, what fp8 attention replaces,
    and compiled FlexAttention on the fp8 tensors (`_flex_fp8`)."""
    # Values do not change the timing; the descales are left out.
    q, k, v = (inputs[n].to(torch.bfloat16).contiguous() for n in ("q", "k", "v"))
    causal = bool(inputs.get("causal", False)) and q.shape[2] == k.shape[2]
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}

    def run() -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=inputs.get("scale"), **gqa
        )

    flash = _sdpa_backend("sdpa-flash")
    if flash is not None:
        yield Impl("sdpa-flash-bf16", run, _in_backend(flash))
    yield _flex_fp8(inputs)


def _flex_fp8(inputs: dict[str, Any]) -> Impl:
    """Compiled FlexAttention on the fp8 tensors as given (it picks V's layout itself): q and k
    descales folded into the softmax scale (per-tensor; a per-head descale is taken at head 0,
    which does not change the timing), out cast to bfloat16 and scaled by v's descale, all in
    the one compiled function, as its fp8 recipe (pytorch/pytorch#151695) does."""
    try:
        flex = _flex_module()
    except ImportError as exc:
        return Impl("flex-compiled-fp8", None, reason=str(exc))
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    first = [float(inputs[f"{n}_descale"].reshape(-1)[0]) for n in ("q", "k", "v")]
    scale = inputs.get("scale")
    scale = (q.shape[-1] ** -0.5 if scale is None else scale) * first[0] * first[1]
    block_mask = None
    if inputs.get("causal", False):
        shift = k.shape[2] - q.shape[2]
        block_mask = flex.create_block_mask(
            lambda b, h, i, j: j <= i + shift, 1, 1, q.shape[2], k.shape[2], device=q.device
        )
    gqa = q.shape[1] != k.shape[1]

    def run() -> torch.Tensor:
        out = flex.flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        return out.to(torch.bfloat16) * first[2]

    return Impl("flex-compiled-fp8", torch.compile(run, dynamic=False))


CONTIGUOUS_SDPA = ("sdpa-cudnn-contiguous", "sdpa-flash-contiguous")


def _paged_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    """SDPA cuDNN and flash decode on the same keys and values stored contiguously
    (`contiguous_kv`, gathered once outside the timing): issue 8's reference, paged decode at
    the speed of the best contiguous kernel. Only where SDPA computes the same thing: Lq = 1
    (SDPA's causal mask is top-left), a 16-bit cache in q's dtype (SDPA has no fp8 cache) and
    every request of one length (no padding)."""
    reason = ""
    if case.lq != 1:
        reason = f"Lq = {case.lq}: SDPA aligns its causal mask top-left, paged bottom-right"
    elif case.cache_dtype is not None:
        reason = f"SDPA has no {case.cache_dtype} KV cache"
    elif len(set(case.seq_lens)) != 1:
        reason = "requests of different lengths: SDPA would need padding"
    if reason:
        for name in CONTIGUOUS_SDPA:
            yield Impl(name, None, reason=reason)
        return
    q = inputs["q"]
    k, v = (contiguous_kv(inputs, name) for name in ("k_cache", "v_cache"))
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}

    def run() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=inputs.get("scale"), **gqa)

    for name in CONTIGUOUS_SDPA:
        backend = _sdpa_backend(name.removesuffix("-contiguous"))
        if backend is None:
            yield Impl(name, None, reason="this torch has no such SDPA backend")
        else:
            yield Impl(name, run, _in_backend(backend))


def contiguous_kv(inputs: dict[str, Any], name: str) -> torch.Tensor:
    """Cache `name` ("k_cache" / "v_cache") of paged `inputs` as a contiguous (B, Hk, L, D)
    tensor: each request's first L = seq_lens[0] slots through its block table (every request
    of that length; NHD or HND layout)."""
    cache, tables = inputs[name], inputs["block_tables"].long()
    length = int(inputs["seq_lens"][0])
    pages = -(-length // cache.shape[1 if inputs["kv_layout"] == "NHD" else 2])
    blocks = cache[tables[:, :pages]]  # (B, pages, block, Hk, D) or (B, pages, Hk, block, D)
    if inputs["kv_layout"] == "HND":
        blocks = blocks.transpose(2, 3)
    batch, _, block, heads, dim = blocks.shape
    tokens = blocks.reshape(batch, pages * block, heads, dim)[:, :length]
    return tokens.transpose(1, 2).contiguous()


def _merge_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    """The merge formula in eager torch, float32 (logsumexp, weights, weighted sum)."""
    out, lse = inputs["out"], inputs["lse"]

    def run() -> torch.Tensor:
        total = torch.logsumexp(lse.float(), dim=-1, keepdim=True)
        weights = torch.exp(lse.float() - total).nan_to_num(0.0)
        return (weights.unsqueeze(-1) * out.float()).sum(dim=-2).to(out.dtype)

    yield Impl("torch-eager", run)


def _gqa_backward_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    from attnverify.verify.targets import sdpa_gqa_attention

    plain = {**inputs, "mask": None, "bias": None}
    masked = inputs.get("mask") is not None or inputs.get("bias") is not None
    flash = _sdpa_backend("sdpa-flash")
    if flash is not None:
        name = "sdpa-flash-no-bias" if masked else "sdpa-flash"
        yield Impl(name, backward_call_of(spec, sdpa_gqa_attention, plain), _in_backend(flash))
    for label in ("sdpa-cudnn", "sdpa-efficient"):
        backend = _sdpa_backend(label)
        if backend is not None:
            call = backward_call_of(spec, sdpa_gqa_attention, inputs)
            yield Impl(label, call, _in_backend(backend))


def _varlen_backward_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> Iterator[Impl]:
    from attnverify.verify.specs import get_spec
    from attnverify.verify.targets import sdpa_gqa_attention

    dense = dense_of_varlen(case, inputs)
    if dense is None:
        yield Impl("sdpa-flash-dense", None, reason="sequence lengths differ: no dense batch")
    elif (flash := _sdpa_backend("sdpa-flash")) is not None:
        call = backward_call_of(get_spec("gqa"), sdpa_gqa_attention, dense)
        yield Impl("sdpa-flash-dense", call, _in_backend(flash))
    yield _torch_varlen(spec, inputs, backward_call_of)


def dense_of_varlen(case: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The varlen inputs of `case` as gqa inputs over a dense (N, H, L, D) batch, when every
    sequence has the same length L (views of the packed tokens: the same memory), else None."""
    lengths = {*case.seqlens_q, *case.seqlens_k}
    if len(lengths) != 1 or not case.seqlens_q:
        return None
    n, length = len(case.seqlens_q), lengths.pop()

    def batch(x: torch.Tensor) -> torch.Tensor:
        return x.view(n, length, *x.shape[1:]).transpose(1, 2)

    q, k, v = (batch(inputs[name]) for name in ("q", "k", "v"))
    return {"q": q, "k": k, "v": v, "mask": None, "bias": None, "causal": case.causal,
            "scale": inputs.get("scale")}  # fmt: skip


_BACKWARD_BASELINES: dict[str, Callable[..., Iterator[Impl]]] = {
    "gqa": _gqa_backward_baselines,
    "varlen": _varlen_backward_baselines,
}


def backward_baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> list[Impl]:
    """The backward baselines of `case`'s variant available here (see the module docstring);
    building one never raises."""
    return _collect(_BACKWARD_BASELINES, spec, case, inputs)


_BASELINES: dict[str, Callable[..., Iterator[Impl]]] = {
    "gqa": _gqa_baselines,
    "varlen": _varlen_baselines,
    "fp8": _fp8_baselines,
    "merge": _merge_baselines,
    "paged": _paged_baselines,
}


def baselines(spec: Any, case: Any, inputs: dict[str, Any]) -> list[Impl]:
    """The baselines of `case`'s variant available here; building one never raises (an
    exception becomes an unavailable `Impl` with its message)."""
    return _collect(_BASELINES, spec, case, inputs)


def _collect(
    makers: dict[str, Callable[..., Iterator[Impl]]], spec: Any, case: Any, inputs: dict[str, Any]
) -> list[Impl]:
    maker = makers.get(case.variant)
    if maker is None:
        return []
    try:
        return list(maker(spec, case, inputs))
    except Exception as exc:
        return [Impl("baselines", None, reason=f"{type(exc).__name__}: {exc}")]


__all__ = [
    "CONTIGUOUS_SDPA",
    "MATH_MAX_SCORES",
    "Impl",
    "backward_baselines",
    "backward_call_of",
    "baselines",
    "call_of",
    "contiguous_kv",
    "dense_of_varlen",
]
