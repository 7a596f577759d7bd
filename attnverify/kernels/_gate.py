"""The verified-kernel gate: refuse to run a kernel that was not verified on this device.

`is_verified(variant)` and `require_verified(variant)` read the verification records
(`attnverify.records`). With `ATTNVERIFY_REQUIRE_VERIFIED=1`, every public kernel function calls
`enforce_verified(variant, device)` and its first call on an unverified (kernel source, arch,
versions) raises `UnverifiedKernelError` naming the command that fixes it. The check runs once
per (variant, device) and process; later calls cost one set lookup. The environment variable is
read at that first call.

Never imports `attnverify.verify` (kernels do not depend on the verifier).
"""

from __future__ import annotations

import os

import torch

from attnverify.records import load_records, normalize_device, record_status, records_path

REQUIRE_ENV = "ATTNVERIFY_REQUIRE_VERIFIED"

_checked: set[tuple[str, torch.device | str]] = set()


class UnverifiedKernelError(RuntimeError):
    """A kernel was called without a valid verification record for this device."""


def verify_command(variant: str, device: torch.device | str | None = None) -> str:
    """The exact command that verifies `variant` on `device`: "attnverify verify --variant gqa --device cuda:0"."""
    return f"attnverify verify --variant {variant} --device {normalize_device(device)}"


def is_verified(variant: str, device: torch.device | str | None = None) -> bool:
    """True if a valid record exists for `variant` on `device` (None: cuda if available, else cpu).

    Valid: same kernel source sha256, arch, device name, torch and triton versions.

    Raises:
        ValueError: unknown variant (valid: varlen, gqa, fp8, paged, merge).
    """
    return record_status(variant, device).state == "verified"


def require_verified(variant: str, device: torch.device | str | None = None) -> None:
    """Raise `UnverifiedKernelError` unless `variant` is verified on `device`.

    The message says whether the record is missing or stale (and which fields changed), where
    the records live, and the command to run.

    Raises:
        UnverifiedKernelError: no valid record.
        ValueError: unknown variant.
    """
    records, problems = load_records()
    status = record_status(variant, device, records=records)
    if status.state == "verified":
        return
    lines = [
        f"attnverify kernel {variant!r} is not verified on {normalize_device(device)}: "
        f"{status.describe()}.",
        f"Records: {records_path()}.",
        *problems,
        f"Run: {verify_command(variant, device)}",
    ]
    raise UnverifiedKernelError("\n".join(lines))


def enforce_verified(variant: str, device: torch.device) -> None:
    """Called by every public kernel function: with `ATTNVERIFY_REQUIRE_VERIFIED=1`, the first
    call per (variant, device) runs `require_verified`; otherwise, and afterwards, a no-op.

    A failed check is not cached: every later call raises again until a record exists.
    """
    key = (variant, device)
    if key in _checked:
        return
    if os.environ.get(REQUIRE_ENV, "0") == "1":
        require_verified(variant, device)
    _checked.add(key)


def clear_cache() -> None:
    """Forget which (variant, device) pairs were checked (the next call checks again)."""
    _checked.clear()


__all__ = [
    "REQUIRE_ENV",
    "UnverifiedKernelError",
    "clear_cache",
    "enforce_verified",
    "is_verified",
    "require_verified",
    "verify_command",
]
