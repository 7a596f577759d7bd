"""Verification records: which kernel source passed `attnverify verify` on which device.

A passing `attnverify verify` (target `attnverify`) appends one JSON line per variant and device
to `$ATTNVERIFY_HOME/records.jsonl` (default `~/.cache/attnverify/records.jsonl`). The kernels'
import gate (`attnverify.kernels._gate`) reads them.

A record is *valid* for a (variant, device) when every field of `STALENESS_FIELDS` equals the
current value: the kernel source sha256, the arch, the device name, the torch and the triton
version. Any change makes it *stale*; `record_status` says which fields changed.

Kernel source hash (`kernel_source_sha`): sha256 over the variant's kernel module
(`varlen` -> `kernels/varlen.py`, `gqa` -> `gqa.py`, `fp8` -> `fp8.py`, `paged` and `merge` ->
`paged.py`), every `kernels/_*.py` except the gate itself, `arch.py` and `validation.py`. Files
are read, never imported, so hashing compiles nothing.

Concurrency: appends take an exclusive `fcntl.flock` and write each line with a single
`os.write` on an `O_APPEND` descriptor, so concurrent `verify` runs lose nothing. A corrupt line
(a crash mid-write on a filesystem without atomic appends, a hand edit) is reported by
`load_records` and skipped; it never stops the others being read.

Imports torch only (no triton import: versions come from package metadata), so the gate can use
it before `TRITON_INTERPRET` matters.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnverify.arch import current_arch

HOME_ENV = "ATTNVERIFY_HOME"
RECORDS_FILE = "records.jsonl"
SCHEMA = 1

VARIANT_MODULES = {
    "varlen": "varlen.py",
    "gqa": "gqa.py",
    "fp8": "fp8.py",
    "paged": "paged.py",
    "merge": "paged.py",
}
VARIANTS = tuple(VARIANT_MODULES)

STALENESS_FIELDS = ("kernel_sha", "arch", "device_name", "torch_version", "triton_version")

_PACKAGE_DIR = Path(__file__).resolve().parent
_KERNELS_DIR = _PACKAGE_DIR / "kernels"
_SHARED_SOURCES = ("arch.py", "validation.py")
_GATE_FILE = "_gate.py"


@dataclass(frozen=True)
class Environment:
    """What a verification depends on, for one device.

    Attributes:
        device: the device string as verified ("cuda:0", "cpu").
        arch: `Arch.name` of the device ("sm90", "gfx942", "cpu-interpreter").
        device_name: the device's name ("NVIDIA H100 80GB HBM3"; "cpu" for the interpreter).
        torch_version, triton_version: installed versions ("" when triton is not installed).
        git_sha: HEAD of the git checkout holding attnverify, or None (not a checkout, no git).
    """

    device: str
    arch: str
    device_name: str
    torch_version: str
    triton_version: str
    git_sha: str | None = None


@dataclass(frozen=True)
class Record:
    """One passing verification of one variant's kernel source on one device.

    Attributes:
        variant: "varlen" | "gqa" | "fp8" | "paged" | "merge".
        kernel_sha: `kernel_source_sha(variant)` at the time of the run.
        device, arch, device_name, torch_version, triton_version, git_sha: see `Environment`.
        cases: number of cases run; seed: the run's seed; profile: hypothesis profile name.
        target: what was verified (always "attnverify" for records the CLI writes).
        summary: rows {"dtype", "quantity", "cases", "failures", "worst_ratio"} of the report.
        time: ISO 8601 UTC timestamp of the append.
        schema: record format version.
    """

    variant: str
    kernel_sha: str
    device: str
    arch: str
    device_name: str
    torch_version: str
    triton_version: str
    git_sha: str | None
    cases: int
    seed: int
    profile: str | None = None
    target: str = "attnverify"
    summary: list[dict[str, Any]] = field(default_factory=list)
    time: str = ""
    schema: int = SCHEMA

    def to_json(self) -> str:
        """One line of JSON (no newline), keys sorted."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """Build a record from a parsed JSON object.

        Raises:
            ValueError: `data` is not an object, lacks a required field or has an unknown one.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a record must be a JSON object; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise ValueError(f"record fields: missing {missing}, unknown {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class RecordStatus:
    """Whether `variant` is verified on a device.

    Attributes:
        variant: the variant asked about.
        state: "verified" (a record matches every staleness field), "stale" (records exist,
            none matches) or "missing" (no record for the variant at all).
        record: the matching record (verified), the closest stale one (stale), or None.
        changed: for "stale", the `STALENESS_FIELDS` in which `record` differs from now.
        current: the environment and kernel sha it was compared against.
    """

    variant: str
    state: str
    record: Record | None
    changed: tuple[str, ...]
    current: dict[str, str]

    def describe(self) -> str:
        """One line: "gqa: stale (kernel_sha, torch_version changed; record of 2026-...)"."""
        if self.state == "missing" or self.record is None:
            return f"{self.variant}: missing (no record)"
        when = self.record.time or "unknown time"
        if self.state == "verified":
            return f"{self.variant}: verified ({self.record.cases} cases, {when})"
        details = ", ".join(
            f"{name} {getattr(self.record, name)!r} -> {self.current[name]!r}"
            for name in self.changed
        )
        return f"{self.variant}: stale ({details}; record of {when})"


def records_path() -> Path:
    """`$ATTNVERIFY_HOME/records.jsonl`, default `~/.cache/attnverify/records.jsonl`."""
    home = os.environ.get(HOME_ENV)
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "attnverify"
    return base / RECORDS_FILE


def _check_variant(variant: str) -> None:
    if variant not in VARIANT_MODULES:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")


def kernel_source_files(variant: str) -> list[Path]:
    """The files whose bytes make up `kernel_source_sha(variant)`, in hashing order."""
    _check_variant(variant)
    helpers = sorted(p for p in _KERNELS_DIR.glob("_*.py") if p.name != _GATE_FILE)
    shared = [_PACKAGE_DIR / name for name in _SHARED_SOURCES]
    return [_KERNELS_DIR / VARIANT_MODULES[variant], *helpers, *shared]


def kernel_source_sha(variant: str) -> str:
    """sha256 (hex) over the kernel source `variant` runs (see the module docstring).

    Each file contributes its path relative to the package and its bytes; a file that does not
    exist contributes its path and a marker, so creating it changes the hash.

    Raises:
        ValueError: unknown variant.
    """
    digest = hashlib.sha256()
    for path in kernel_source_files(variant):
        digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """HEAD of the git checkout that holds this package, or None."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and sha else None


def normalize_device(device: torch.device | str | None) -> torch.device:
    """`device` as a torch.device with an index for CUDA (None: cuda if available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def current_environment(
    device: torch.device | str | None = None, *, git: bool = True
) -> Environment:
    """The environment a verification on `device` depends on (None: cuda if available else cpu).

    `git=False` skips the `git rev-parse` subprocess (the import gate does not need the sha).
    """
    dev = normalize_device(device)
    arch = current_arch(dev)
    if dev.type == "cpu":
        device_name = "cpu"
    else:
        device_name = arch.device_name or torch.cuda.get_device_name(dev)
    return Environment(
        device=str(dev),
        arch=arch.name,
        device_name=device_name,
        torch_version=torch.__version__,
        triton_version=_triton_version(),
        git_sha=git_sha() if git else None,
    )


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_record(
    variant: str,
    env: Environment,
    *,
    cases: int,
    seed: int,
    profile: str | None = None,
    target: str = "attnverify",
    summary: list[dict[str, Any]] | None = None,
) -> Record:
    """A record for `variant` verified in `env`, stamped with the current source sha and time."""
    return Record(
        variant=variant,
        kernel_sha=kernel_source_sha(variant),
        device=env.device,
        arch=env.arch,
        device_name=env.device_name,
        torch_version=env.torch_version,
        triton_version=env.triton_version,
        git_sha=env.git_sha,
        cases=cases,
        seed=seed,
        profile=profile,
        target=target,
        summary=list(summary or []),
        time=_utc_now(),
    )


def append_record(record: Record, path: Path | str | None = None) -> Path:
    """Append `record` as one line to the records file (created with its folder if needed).

    Safe with concurrent writers: the line is written whole by one `os.write` on an `O_APPEND`
    descriptor while holding an exclusive `flock`. Returns the file's path.
    """
    target = Path(path) if path is not None else records_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (record.to_json() + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {target}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)
    return target


def load_records(path: Path | str | None = None) -> tuple[list[Record], list[str]]:
    """Read every record; corrupt lines are skipped and described, never fatal.

    Returns:
        (records in file order, problems): each problem names the file, the line number and
        what is wrong with it ("records.jsonl:7: not JSON (Expecting ',' ...)"). A missing file
        gives ([], []).
    """
    source = Path(path) if path is not None else records_path()
    try:
        fd = os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        return [], []
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read()
    finally:
        os.close(fd)
    records: list[Record] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            problems.append(f"{source}:{number}: corrupt record skipped ({exc})")
    return records, problems


def _current_fields(variant: str, env: Environment) -> dict[str, str]:
    return {
        "kernel_sha": kernel_source_sha(variant),
        "arch": env.arch,
        "device_name": env.device_name,
        "torch_version": env.torch_version,
        "triton_version": env.triton_version,
    }


def record_status(
    variant: str,
    device: torch.device | str | None = None,
    *,
    records: list[Record] | None = None,
    env: Environment | None = None,
) -> RecordStatus:
    """Is `variant` verified on `device` for the current kernel source and versions?

    Args:
        variant: "varlen" | "gqa" | "fp8" | "paged" | "merge".
        device: the device to judge (None: cuda if available else cpu).
        records: records to search (None: `load_records()`, corrupt lines skipped).
        env: the environment to compare against (None: `current_environment(device)`).

    Returns:
        "verified" with the newest matching record; else "stale" with the record that differs
        in the fewest staleness fields (newest among equals) and those fields; else "missing".
    """
    _check_variant(variant)
    env = env or current_environment(device, git=False)
    current = _current_fields(variant, env)
    if records is None:
        records, _ = load_records()
    best: tuple[int, int] | None = None
    chosen: tuple[Record, tuple[str, ...]] | None = None
    for order, record in enumerate(records):
        if record.variant != variant or record.target != "attnverify":
            continue
        changed = tuple(f for f in STALENESS_FIELDS if getattr(record, f) != current[f])
        rank = (len(changed), -order)
        if best is None or rank < best:
            best, chosen = rank, (record, changed)
    if chosen is None:
        return RecordStatus(variant, "missing", None, (), current)
    record, changed = chosen
    return RecordStatus(variant, "stale" if changed else "verified", record, changed, current)


def find_record(variant: str, device: torch.device | str | None = None) -> Record | None:
    """The newest valid (non-stale) record for `variant` on `device`, or None."""
    status = record_status(variant, device)
    return status.record if status.state == "verified" else None


__all__ = [
    "HOME_ENV",
    "STALENESS_FIELDS",
    "VARIANTS",
    "Environment",
    "Record",
    "RecordStatus",
    "append_record",
    "current_environment",
    "find_record",
    "git_sha",
    "kernel_source_files",
    "kernel_source_sha",
    "load_records",
    "make_record",
    "normalize_device",
    "record_status",
    "records_path",
]
