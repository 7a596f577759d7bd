"""Float64, differentiable PyTorch oracles: the definition of "correct" for every variant.

Each function has the signature of its kernel in `attnverify.kernels` plus the keyword
`compute_dtype` (float64 by default; the input dtype gives the same-precision baseline).
"""

from attnverify.reference.fp8 import fp8_attention, quantize_fp8
from attnverify.reference.gqa import gqa_attention
from attnverify.reference.paged import merge_attention_states, paged_attention
from attnverify.reference.varlen import cu_seqlens_from_grid_thw, varlen_attention

__all__ = [
    "cu_seqlens_from_grid_thw",
    "fp8_attention",
    "gqa_attention",
    "merge_attention_states",
    "paged_attention",
    "quantize_fp8",
    "varlen_attention",
]
