"""The registry of planted bugs: `PlantedBug`, `BUGS` and the `planted` decorator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
