"""Flash core, TMA loads: when the kernels read their inner-loop tiles through TMA
descriptors, and the descriptors.

`tma_policy` reads `$ATTNVERIFY_FLASH_TMA`; `_use_tma` decides for one launch (the policy, the
arch, the layout: `_tma_view`); `_pair_descriptors` builds a kernel's descriptor arguments and
`_bwd_descriptors` makes a backward pass's decision. The forward loads K and V this way, the
dk/dv pass Q and dO, the dq pass K and V (`_flash_tiles._pair_tiles`); the launchers are in
`_flash`. Varlen masked tiles load through pointers whatever the policy (a varlen
descriptor spans every packed row; `_flash_tiles._pair_tiles`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton without host TMA descriptors: pointer loads only
    TensorDescriptor = None

from attnverify.arch import current_arch, interpreter_active
from attnverify.kernels._common import HeadDimSplit, env_choice, split_head_dim
from attnverify.kernels._flash_bwd import _dkdv, _dq
from attnverify.kernels._flash_fwd import _fwd

if TYPE_CHECKING:
    from attnverify.kernels._flash import FlashConfig

TMA_ENV = "ATTNVERIFY_FLASH_TMA"
TMA_POLICIES = ("auto", "0", "1")
TMA_DTYPES = (torch.float16, torch.bfloat16)


def tma_policy() -> str:
    """How the flash kernels load their inner-loop tiles (forward: K, V; backward: Q, dO in
    the dk/dv pass, K, V in the dq pass), from `$ATTNVERIFY_FLASH_TMA` (read at every call):

    - unset or "auto": TMA descriptors on NVIDIA sm90+ (`attnverify.arch`) outside the
      interpreter, where the layout allows them (`_tma_view`), else pointer loads;
    - "0": pointer loads always;
    - "1": TMA wherever the layout allows, on any device, the interpreter included (tests,
      compile checks on a machine without a GPU, and the TMA-vs-pointer device comparison;
      on a GPU without TMA the launch fails).

    Raises:
        ValueError: the variable holds something else than the documented values.
    """
    return env_choice(TMA_ENV, TMA_POLICIES, "auto")


def _tma_view(x: torch.Tensor, is_varlen: bool, block_n: int) -> tuple[list[int], list[int]] | None:
    """K or V as the (Z, H, rows, D) shape and strides of a TMA descriptor, or None where TMA
    cannot address it: a float16 / bfloat16 tensor with D unit-stride, every other stride
    positive and a multiple of 16 bytes, a 16-byte aligned base, and boxes no larger than the
    tensor (at least `block_n` rows, the largest key block the launch may take, and D at least
    the lane tile D0: D = 8 keeps pointer loads). Boxes reaching past the end of the rows are
    fine (zero fill); CUDA's encoder is not relied on for boxes larger than a whole dim.
    Varlen (T, Hk, D) is (1, Hk, T, D) over every packed row; the size-1 Z dim gets the
    stride T * stride_t (never stepped along)."""
    if x.dtype not in TMA_DTYPES or x.numel() == 0:
        return None
    shape, strides = _tma_geometry(x, is_varlen)
    if shape[2] < block_n or shape[3] < split_head_dim(shape[3]).d0:
        return None
    aligned = all(s > 0 and s * x.element_size() % 16 == 0 for s in strides[:-1])
    if strides[-1] != 1 or not aligned or x.data_ptr() % 16 != 0:
        return None
    return shape, strides


def _tma_geometry(x: torch.Tensor, is_varlen: bool) -> tuple[list[int], list[int]]:
    """K or V as (Z, H, rows, D) shape and strides, unchecked (`_tma_view` checks them)."""
    if is_varlen:
        t, h, d = x.shape
        return [1, h, t, d], [t * x.stride(0), x.stride(1), x.stride(0), x.stride(2)]
    return list(x.shape), list(x.stride())


def _use_tma(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_varlen: bool, block_n: int
) -> bool:
    """Whether this forward loads K and V through TMA descriptors (`tma_policy`); `block_n`:
    the largest key block the launch may take (`_largest_key_block`)."""
    mode = tma_policy()
    if mode == "0" or TensorDescriptor is None:
        return False
    if _tma_view(k, is_varlen, block_n) is None or _tma_view(v, is_varlen, block_n) is None:
        return False
    if mode == "1":
        return True
    if interpreter_active():
        return False
    arch = current_arch(q.device)
    return arch.vendor == "nvidia" and arch.capability >= (9, 0)


# the largest BLOCK_INNER of the forward's configs (the autotuner and the pinning policies
# pick among them, or among smaller fallbacks)
FWD_LARGEST_KEY_BLOCK = max(c.kwargs["BLOCK_INNER"] for c in _fwd.configs)


def _largest_key_block(config: FlashConfig | None) -> int:
    """The largest BLOCK_INNER a forward launch may run: the pinned config's, else
    FWD_LARGEST_KEY_BLOCK."""
    return config.block_inner if config is not None else FWD_LARGEST_KEY_BLOCK


# the largest BLOCK_INNER of the backward's configs, both passes (the dk/dv pass's query block,
# the dq pass's key block; the autotuner and the pinning policies pick among them, or among
# smaller fallbacks)
BWD_LARGEST_INNER_BLOCK = max(c.kwargs["BLOCK_INNER"] for c in (*_dkdv.configs, *_dq.configs))


def _pair_descriptors(
    x: torch.Tensor,
    y: torch.Tensor,
    names: tuple[str, str, str, str],
    split: HeadDimSplit,
    is_varlen: bool,
) -> dict[str, object]:
    """A kernel's descriptor arguments over its inner-loop operands x and y as (Z, H, rows, D)
    (`_tma_geometry`; the caller has checked them with `_use_tma`): names are (x tile 0, y tile
    0, x tile 1, y tile 1), the tile-1 ones None without a tile 1. Forward and dq pass: K and
    V (KV_DESC_NAMES); dk/dv pass: Q and dO (`_flash_bwd.QDO_DESC_NAMES`). Block shapes are
    placeholders until the kernel's pre-hook (`_flash_fwd._set_kv_block_shapes`,
    `_flash_bwd._set_qdo_block_shapes`) runs."""
    geometry = {id(t): _tma_geometry(t, is_varlen) for t in (x, y)}
    descs: dict[str, object] = {}
    for name, t in zip(names, (x, y, x, y), strict=True):
        if name.endswith("1") and not split.has_d1:
            descs[name] = None
            continue
        shape, strides = geometry[id(t)]
        descs[name] = TensorDescriptor(t, list(shape), list(strides), [1, 1, 16, 16])
    return descs


def _bwd_descriptors(
    x: torch.Tensor,
    y: torch.Tensor,
    q: torch.Tensor,
    names: tuple[str, str, str, str],
    is_varlen: bool,
    config: FlashConfig | None,
) -> tuple[bool, dict[str, object]]:
    """(USE_TMA, descriptor arguments) of one backward pass whose inner loop loads x and y
    (`tma_policy`, `_use_tma`; `config`: the pass's pinned config, which bounds its inner
    block, else BWD_LARGEST_INNER_BLOCK); the arguments are None with pointer loads. With a
    (1, 1, L, L) bias (B = 1, Hq = 16, L = 8192, D = 128, H200, ci/notes_flash.md session 23)
    TMA ran the dk/dv pass 1.35x and the dq pass 1.19x faster than pointer loads."""
    block = config.block_inner if config is not None else BWD_LARGEST_INNER_BLOCK
    if not _use_tma(q, x, y, is_varlen, block):
        return False, dict.fromkeys(names)
    return True, _pair_descriptors(x, y, names, split_head_dim(q.shape[-1]), is_varlen)


__all__ = ["TMA_ENV", "TMA_POLICIES", "tma_policy"]
