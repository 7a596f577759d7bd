"""Shared machinery of the variant specs: value generation, memory layouts, calling convention.

A spec (`VariantSpec` subclass, one per variant file) says how a `Case` becomes inputs, how the
oracle, the baseline and an implementation are called, and which quantities are compared. The
calls all go through `VariantSpec.run`, which handles autograd (a seeded random grad_output,
gradients of the differentiable inputs), non-contiguous leaves, NaN-poisoning of the allocator
before the implementation runs, and detection of implementations that write into their inputs.

Values are drawn on the CPU from `torch.Generator().manual_seed(case.seed)` and then moved, so a
case gives identical tensors on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from attnverify.verify.case import Case

NAN = float("nan")
OUTLIER_SCALE = 20.0
PEAKED_SCALE = 3.5


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for `seed`; `stream` separates independent draws of one case."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % (2**63))


def values(
    shape: Sequence[int], distribution: str, gen: torch.Generator, *, peaked: bool = True
) -> torch.Tensor:
    """float32 CPU values of `shape` for an input distribution.

    "normal": N(0, 1). "peaked": N(0, PEAKED_SCALE^2) when `peaked` (large q/k make softmax
    rows nearly one-hot, stressing the running max), else normal. "outliers": normal with ~1%
    of the elements multiplied by OUTLIER_SCALE.
    """
    x = torch.randn(tuple(shape), generator=gen)
    if distribution == "peaked" and peaked:
        x = x * PEAKED_SCALE
    elif distribution == "outliers":
        hit = torch.rand(tuple(shape), generator=gen) < 0.01
        x = torch.where(hit, x * OUTLIER_SCALE, x)
    return x


def physical(
    x: torch.Tensor, layout: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Place the logical tensor `x` (..., H, L, D) or (T, H, D) in memory as `layout` says.

    "contiguous": a contiguous copy. "transposed": sequence-major memory ((B, L, H, D) for a
    4-D tensor, (H, T, D) for a 3-D one) viewed back in the logical shape. "offset": a view at a
    storage offset inside a NaN-filled buffer whose rows are padded by 8 elements (reading
    outside the view, e.g. padded head dims or a wrong stride, meets NaN). "packed" is built by
    `packed_views` (it needs all of q, k, v).
    """
    x = x.to(device=device, dtype=dtype) if dtype.is_floating_point else x.to(device)
    if layout == "transposed" and x.dim() >= 3:
        axes = (1, 2) if x.dim() == 4 else (0, 1)
        return x.transpose(*axes).contiguous().transpose(*axes)
    if layout == "offset" and x.dim() >= 2 and x.dtype.is_floating_point:
        rows, width = math.prod(x.shape[:-1]), x.shape[-1] + 8
        offset = 8 * (1 + x.shape[-1] % 5)
        buf = torch.full((offset + rows * width,), NAN, dtype=dtype, device=device)
        view = buf[offset:].view(*x.shape[:-1], width)[..., : x.shape[-1]]
        view.copy_(x)
        return view
    return x.contiguous()


def packed_views(
    tensors: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """q, k, v views sliced from one packed buffer along the head dim (like a fused qkv GEMM's
    output), with one extra NaN head at the end. Tensors are (B, H, L, D) or (T, H, D); those
    whose other dims differ (Lq != Lk) go in separate buffers."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        key = (*t.shape[:1], *t.shape[2:])
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        seq_major = [_seq_major(tensors[i]) for i in members]
        nan_head = torch.full_like(seq_major[0][..., :1, :], NAN)
        buf = torch.cat([*seq_major, nan_head], dim=-2).to(device=device, dtype=dtype)
        start = 0
        for i, t in zip(members, seq_major, strict=True):
            view = buf[..., start : start + t.shape[-2], :]
            out[i] = view.transpose(1, 2) if view.dim() == 4 else view
            start += t.shape[-2]
    return [t for t in out if t is not None]


def _seq_major(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H, D); (T, H, D) unchanged."""
    return x.transpose(1, 2) if x.dim() == 4 else x


def place_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: str,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in the memory layout of the case (see `physical`, `packed_views`)."""
    if layout == "packed":
        q2, k2, v2 = packed_views([q, k, v], dtype, device)
        return q2, k2, v2
    return (
        physical(q, layout, dtype, device),
        physical(k, layout, dtype, device),
        physical(v, layout, dtype, device),
    )


def poison_allocator(
    shapes: Sequence[tuple[tuple[int, ...], torch.dtype]], device: torch.device
) -> None:
    """Allocate NaN-filled blocks of the outputs' sizes and free them, so an implementation's
    `torch.empty` of the same size (the caching allocator on CUDA, malloc's free lists on the CPU)
    most likely gets NaN memory: elements it forgets to write show as NaN."""
    blocks = []
    for shape, dtype in shapes:
        if dtype.is_floating_point and math.prod(shape) > 0:
            blocks.append(torch.full(shape, NAN, dtype=dtype, device=device))
    del blocks


def _snapshot(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.detach().contiguous().reshape(-1).view(torch.uint8)


def modified_inputs(before: dict[str, torch.Tensor], inputs: dict[str, Any]) -> list[str]:
    """Names of input tensors whose bits changed since `before` (an impl wrote into them)."""
    return [k for k, t in before.items() if not torch.equal(_bits(t), _bits(inputs[k]))]


def _broadcast(shape: tuple[int, ...] | None) -> tuple[bool, ...] | None:
    """Which dims of a mask / bias shape are 1 (broadcast), or None without one."""
    return None if shape is None else tuple(n == 1 for n in shape)


class ImplError(Exception):
    """The implementation raised or returned something unusable (message says which)."""


class VariantSpec:
    """How one variant is verified. Subclasses set the class attributes and the hooks.

    Attributes:
        name: variant key ("gqa", ...).
        positional: names of the public function's positional parameters, in order.
        grad_inputs: differentiable inputs (gradients compared as "d" + name).
        returns_lse_flag: the public function takes `return_lse` (merge does not).
    """

    name = ""
    positional: tuple[str, ...] = ()
    grad_inputs: tuple[str, ...] = ()
    returns_lse_flag = True

    # ---- hooks subclasses implement
    def strategy(
        self, profile: str = "ci", dtypes: Sequence[str] | None = None
    ) -> st.SearchStrategy[Case]:
        raise NotImplementedError

    def default_dtypes(self, device: torch.device) -> tuple[str, ...]:
        """Input dtypes drawn when the caller names none (CPU interpreter: no bfloat16)."""
        if device.type == "cpu":
            return ("float16", "float32")
        return ("float16", "bfloat16", "float32")

    def make_inputs(self, case: Case, device: torch.device | str) -> dict[str, Any]:
        raise NotImplementedError

    def oracle(self) -> Callable[..., Any]:
        raise NotImplementedError

    def baseline(self, case: Case) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """The same-precision baseline: the oracle in the input dtype, (out, lse) returned."""
        fn = self.oracle()
        dtype = case.torch_dtype

        def run(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return fn(*args, **kwargs, compute_dtype=dtype)

        return run

    def quantity_dtype(self, case: Case, quantity: str) -> torch.dtype:
        """dtype a kernel returns the quantity in (sets the tolerance floor's ulp)."""
        if quantity == "lse":
            return torch.float32
        return case.torch_dtype

    def compile_affinity(self, case: Case) -> tuple:
        """The case fields that select the variant's kernel specialisations: cases with equal
        keys compile the same kernels, so a sharded run deals each key's cases to one worker
        (`attnverify.verify.shard.deal`). Default: dtypes, head dim, causal, which dims of
        the mask and bias broadcast, the cache's dtype, layout and block size. Input layouts,
        descale shapes and lengths are left out: the kernels take them as strides and runtime
        values."""
        return (
            case.variant, case.dtype, case.head_dim, case.causal, _broadcast(case.mask_shape),
            _broadcast(case.bias_shape), case.bias_dtype, case.out_dtype, case.cache_dtype,
            case.kv_layout, case.block_size,
        )  # fmt: skip

    def pinned_cases(self) -> list[Case]:
        """Small hand-picked cases run before the drawn ones in every `check` (their dtype is
        replaced by the dtype being checked): the edges where shipped kernels broke."""
        return []

    def flops(self, case: Case) -> float:
        raise NotImplementedError

    def bytes_moved(self, case: Case) -> float:
        raise NotImplementedError

    def bench_cases(self) -> list[Case]:
        raise NotImplementedError

    def bench_backward(self, case: Case) -> bool:
        """Whether `attnverify bench` also times the backward at this bench case. Default: no."""
        return False

    def structural_zeros(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Bool masks (broadcastable to each quantity) of elements that must be exactly 0.

        Default: out rows whose oracle lse is -inf (no visible key), lse of shape out[..., 0].
        """
        empty = torch.isneginf(oracle["lse"]).unsqueeze(-1)
        return {"out": empty, "dq": empty}

    def magnitudes(
        self, case: Case, inputs: dict[str, Any], oracle: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Per quantity, the largest absolute summand behind it (the scale its rounding error
        is relative to; see `compare`'s `magnitude`). Default: none (max|ref| is used)."""
        return {}

    # ---- shared behaviour
    def quantities(self, case: Case, grads: bool) -> tuple[str, ...]:
        """Quantities compared for the case: out, lse, and with grads "d" + each grad input."""
        out: tuple[str, ...] = ("out", "lse")
        if grads and self.grad_inputs:
            out += tuple(f"d{n}" for n in self.grad_inputs if self._has_input(case, n))
        return out

    def _has_input(self, case: Case, name: str) -> bool:
        return name != "bias" or case.bias_shape is not None

    def grad_output(self, case: Case, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The seeded random grad_output (float32 values, same for oracle/baseline/impl)."""
        return torch.randn(tuple(shape), generator=generator(case.seed, 99)).to(device)

    def _call(self, fn: Callable[..., Any], inputs: dict[str, Any]) -> Any:
        args = [inputs[n] for n in self.positional]
        kwargs = {k: v for k, v in inputs.items() if k not in self.positional}
        if self.returns_lse_flag:
            kwargs["return_lse"] = True
        return fn(*args, **kwargs)

    def run_oracle(
        self, inputs: dict[str, Any], case: Case, *, grads: bool = True
    ) -> dict[str, torch.Tensor]:
        """The float64 oracle's quantities (gradients through float64 copies of the inputs)."""
        return self.run(self.oracle(), inputs, case, grads=grads, leaf_dtype=torch.float64)

    def run_baseline(
        self, inputs: dict[str, Any], case: Case, *, grads: bool = True
    ) -> dict[str, torch.Tensor]:
        """The same-precision baseline's quantities (`baseline`)."""
        return self.run(self.baseline(case), inputs, case, grads=grads)

    def run_impl(
        self,
        impl: Callable[..., Any],
        inputs: dict[str, Any],
        case: Case,
        *,
        grads: bool = True,
        poison: Sequence[tuple[tuple[int, ...], torch.dtype]] = (),
    ) -> dict[str, torch.Tensor]:
        """The implementation's quantities; raises `ImplError` for anything unusable."""
        return self.run(impl, inputs, case, grads=grads, is_impl=True, poison=poison)

    def run(
        self,
        fn: Callable[..., Any],
        inputs: dict[str, Any],
        case: Case,
        *,
        grads: bool,
        leaf_dtype: torch.dtype | None = None,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
        is_impl: bool = False,
        poison: Sequence[tuple[tuple[int, ...], torch.dtype]] = (),
    ) -> dict[str, torch.Tensor]:
        """Call `fn` on `inputs`; return {"out", "lse", and gradients if `grads`}.

        Args:
            leaf_dtype: cast the differentiable inputs to this dtype first (float64 oracle).
            post: applied to out (the baseline's rounding to the output dtype).
            is_impl: the call is the implementation under test: results must be tensors, the
                inputs must come back unmodified; failures raise `ImplError`.
            poison: (shape, dtype) of expected outputs, NaN-poisoned in the allocator first.
        """
        call_inputs = dict(inputs)
        leaves: dict[str, torch.Tensor] = {}
        if grads:
            for name in self.grad_inputs:
                x = call_inputs.get(name)
                if isinstance(x, torch.Tensor):
                    x = x.detach()
                    if leaf_dtype is not None:
                        x = x.to(leaf_dtype)
                    leaves[name] = x.requires_grad_()
                    call_inputs[name] = leaves[name]
        elif leaf_dtype is not None:
            for name in self.grad_inputs:
                x = call_inputs.get(name)
                if isinstance(x, torch.Tensor):
                    call_inputs[name] = x.to(leaf_dtype)
        before = _snapshot(call_inputs) if is_impl else {}
        if poison:
            poison_allocator(poison, torch.device(case_device(inputs)))
        if is_impl:
            try:
                result = self._call(fn, call_inputs)
            except Exception as exc:
                raise ImplError(f"implementation raised {type(exc).__name__}: {exc}") from exc
        else:
            result = self._call(fn, call_inputs)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ImplError(
                f"expected (out, lse) with return_lse=True; got {type(result).__name__}"
            )
        out, lse = result
        if not isinstance(out, torch.Tensor) or not isinstance(lse, torch.Tensor):
            raise ImplError(
                f"expected (out, lse) tensors; got ({type(out).__name__}, {type(lse).__name__})"
            )
        if is_impl:
            changed = modified_inputs(before, call_inputs)
            if changed:
                raise ImplError(f"implementation wrote into its inputs: {', '.join(changed)}")
        res = {"out": out.detach(), "lse": lse.detach()}
        if post is not None:
            res["out"] = post(res["out"])
        if grads and leaves and not out.requires_grad:
            if is_impl and out.numel() > 0:
                raise ImplError("out does not require grad: no backward (pass grads=False)")
            # An empty output (no query rows at all) may be a constant: every gradient is 0.
            res.update({f"d{name}": torch.zeros_like(leaf) for name, leaf in leaves.items()})
        elif grads and leaves:
            g_out = self.grad_output(case, out.shape, out.device)
            # dO in the case's memory layout: a backward must not assume a contiguous dO.
            layout = case.layout if case.layout in ("transposed", "offset") else "contiguous"
            g_out = physical(g_out, layout, out.dtype, out.device)
            try:
                got = torch.autograd.grad(out, list(leaves.values()), g_out, allow_unused=True)
            except Exception as exc:
                if not is_impl:
                    raise
                raise ImplError(f"backward raised {type(exc).__name__}: {exc}") from exc
            for name, g, leaf in zip(leaves, got, leaves.values(), strict=True):
                res[f"d{name}"] = torch.zeros_like(leaf) if g is None else g
        return res


def case_device(inputs: dict[str, Any]) -> torch.device:
    """The device of the first tensor input."""
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """cuda if available else cpu, for `device=None`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


__all__ = [
    "ImplError",
    "VariantSpec",
    "case_device",
    "generator",
    "packed_views",
    "physical",
    "place_qkv",
    "poison_allocator",
    "resolve_device",
    "values",
]
