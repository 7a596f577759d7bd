"""Verification records: round trip, staleness by field, source hashing, concurrency, corruption."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from attnverify import records

WRITERS = 2
RECORDS_PER_WRITER = 150


def _record(variant: str = "gqa", **changes: object) -> records.Record:
    env = records.current_environment("cpu", git=False)
    return dataclasses.replace(records.make_record(variant, env, cases=3, seed=7), **changes)


def _changed_value(field: str) -> str:
    return "other-" + field


@given(changed=st.sets(st.sampled_from(records.STALENESS_FIELDS)))
@example(changed=set())
@example(changed=set(records.STALENESS_FIELDS))
def test_records_stale_exactly_when_a_staleness_field_changed(changed: set[str]) -> None:
    record = _record(**{f: _changed_value(f) for f in changed})
    back = records.Record.from_dict(json.loads(record.to_json()))
    assert back == record
    status = records.record_status("gqa", "cpu", records=[back])
    assert status.state == ("stale" if changed else "verified"), status.describe()
    assert set(status.changed) == changed
    for field in changed:
        assert field in status.describe()


def test_records_missing_and_closest_stale_record(home: Path) -> None:
    assert records.record_status("varlen", "cpu").state == "missing"
    records.append_record(_record("varlen", torch_version="0.1", arch="sm90"))
    records.append_record(_record("varlen", torch_version="0.2"))
    records.append_record(_record("gqa"))
    status = records.record_status("varlen", "cpu")
    assert status.state == "stale"
    assert status.changed == ("torch_version",), "the record differing in fewest fields is shown"
    assert records.find_record("varlen", "cpu") is None
    assert records.find_record("gqa", "cpu") is not None
    assert records.record_status("merge", "cpu").state == "missing"


def test_records_other_targets_never_verify(home: Path) -> None:
    records.append_record(_record("gqa", target="reference"))
    assert records.record_status("gqa", "cpu").state == "missing"


@pytest.fixture
def source_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the package's hashed files; records hashes the copy instead."""
    package = Path(records.__file__).parent
    copy = tmp_path / "attnverify"
    shutil.copytree(package / "kernels", copy / "kernels", ignore=shutil.ignore_patterns("__py*"))
    for name in ("arch.py", "validation.py"):
        shutil.copy(package / name, copy / name)
    monkeypatch.setattr(records, "_PACKAGE_DIR", copy)
    monkeypatch.setattr(records, "_KERNELS_DIR", copy / "kernels")
    return copy


def _touch(path: Path) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(text + "\n# changed\n")


@pytest.mark.parametrize(
    ("edited", "stale_variants"),
    [
        ("kernels/gqa.py", {"gqa"}),
        ("kernels/paged.py", {"paged", "merge"}),
        ("kernels/_common.py", set(records.VARIANTS)),
        ("kernels/_new_helper.py", set(records.VARIANTS)),
        ("arch.py", set(records.VARIANTS)),
        ("validation.py", set(records.VARIANTS)),
        ("kernels/_gate.py", set()),
        ("kernels/__init__.py", set(records.VARIANTS)),
    ],
)
def test_records_source_change_makes_stale(
    home: Path, source_copy: Path, edited: str, stale_variants: set[str]
) -> None:
    for variant in records.VARIANTS:
        records.append_record(_record(variant))
    _touch(source_copy / edited)
    for variant in records.VARIANTS:
        status = records.record_status(variant, "cpu")
        expected = "stale" if variant in stale_variants else "verified"
        assert status.state == expected, f"{edited} edited: {status.describe()}"
        if expected == "stale":
            assert status.changed == ("kernel_sha",)


def test_records_version_change_makes_stale(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records.append_record(_record("gqa"))
    monkeypatch.setattr(records, "_triton_version", lambda: "0.0.1")
    assert records.record_status("gqa", "cpu").changed == ("triton_version",)
    monkeypatch.setattr(torch, "__version__", "0.0.2")
    assert records.record_status("gqa", "cpu").changed == ("torch_version", "triton_version")


def test_records_device_change_makes_stale(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records.append_record(_record("fp8"))
    assert records.record_status("fp8", "cpu").state == "verified"
    monkeypatch.setenv("ATTNVERIFY_ARCH", "sm90")
    assert records.record_status("fp8", "cpu").changed == ("arch",)
    monkeypatch.delenv("ATTNVERIFY_ARCH")
    env = dataclasses.replace(records.current_environment("cpu"), device_name="NVIDIA H100")
    assert records.record_status("fp8", "cpu", env=env).changed == ("device_name",)


WRITER = """
import sys
from attnverify import records
env = records.current_environment("cpu", git=False)
for i in range(int(sys.argv[2])):
    records.append_record(records.make_record("gqa", env, cases=i, seed=int(sys.argv[1])))
"""


def test_records_concurrent_writers_lose_nothing(home: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(seed), str(RECORDS_PER_WRITER)],
            env={**os.environ, "ATTNVERIFY_HOME": str(home)},
        )
        for seed in range(WRITERS)
    ]
    codes = [p.wait() for p in procs]
    assert codes == [0] * WRITERS
    loaded, problems = records.load_records()
    assert problems == []
    got = sorted((r.seed, r.cases) for r in loaded)
    assert got == [(s, i) for s in range(WRITERS) for i in range(RECORDS_PER_WRITER)]


def test_records_corrupt_lines_reported_not_fatal(home: Path) -> None:
    good = _record("gqa")
    path = records.append_record(good)
    with path.open("a") as handle:
        handle.write('{"variant": "gqa", "kernel_sha": \n')
        handle.write("not json at all\n")
        handle.write(json.dumps({**json.loads(good.to_json()), "extra": 1}) + "\n")
        handle.write("[1, 2]\n\n")
    records.append_record(_record("varlen"))
    loaded, problems = records.load_records()
    assert [r.variant for r in loaded] == ["gqa", "varlen"]
    assert [p.split(": corrupt")[0].rsplit(":", 1)[1] for p in problems] == ["2", "3", "4", "5"]
    assert records.record_status("varlen", "cpu").state == "verified"


def test_records_path_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ATTNVERIFY_HOME", raising=False)
    assert records.records_path() == Path.home() / ".cache" / "attnverify" / "records.jsonl"
    monkeypatch.setenv("ATTNVERIFY_HOME", str(tmp_path))
    assert records.records_path() == tmp_path / "records.jsonl"


def test_records_unknown_variant_named() -> None:
    with pytest.raises(ValueError, match="varlen, gqa, fp8, paged, merge; got 'mla'"):
        records.kernel_source_sha("mla")
