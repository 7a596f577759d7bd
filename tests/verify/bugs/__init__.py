"""A catalog of planted bugs: attention implementations that are wrong the way shipped kernels were.

Each entry is a callable with its variant's public signature that behaves like a kernel (out in
the input dtype or `out_dtype`, lse float32, computed in the input precision by the oracle with
`compute_dtype` set, or in float32 where real kernels keep softmax in float32) plus exactly one
defect. The first docstring line names the real bug class. `tests/verify/test_planted_bugs.py`
requires `check(bug.variant, bug)` to flag every one of them within the default `ci` budget.

Gradient bugs keep the forward exact and corrupt only the backward, through
`torch.autograd.Function`s (`GroupFirstHead`, `ExpandFirstOnly`, `ValueFrom` in `_kernels`) or
gradient hooks on private views of the inputs (never on the caller's tensors).

Modules: one per variant (`gqa` forward, `gqa_backward`, `gqa_semantics`, `varlen`, `paged`, `merge`, `fp8`); the
correct kernels the bugs bend (`gqa_kernel`, `varlen_by_ranges`, `paged_kernel`,
`paged_split_kernel` + `merge_correct`, `fp8_kernel`) are exported so
`test_false_alarms.py` can prove they pass `check` themselves.
"""

from . import fp8, gqa, gqa_backward, gqa_semantics, merge, paged, varlen
from ._kernels import gqa_kernel
from ._registry import BUGS, PlantedBug, planted
from .fp8 import fp8_kernel
from .paged import merge_correct, paged_kernel, paged_split_kernel
from .varlen import seq_ranges, varlen_by_ranges

__all__ = [
    "BUGS",
    "PlantedBug",
    "fp8",
    "fp8_kernel",
    "gqa",
    "gqa_backward",
    "gqa_kernel",
    "gqa_semantics",
    "merge",
    "merge_correct",
    "paged",
    "paged_kernel",
    "paged_split_kernel",
    "planted",
    "seq_ranges",
    "varlen",
    "varlen_by_ranges",
]
