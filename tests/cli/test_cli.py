"""The `attnverify` command: verify, replay, status, bench, reports, progress, sharding."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attnverify import records
from attnverify.verify.cli import main
from attnverify.verify.report import ProgressBar
from attnverify.verify.shard import draw_cases


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_cli_verify_reference_writes_reports_and_no_record(home: Path, tmp_path: Path) -> None:
    report, junit, markdown = tmp_path / "r.json", tmp_path / "j.xml", tmp_path / "m.md"
    variants = "--variant merge --variant gqa"
    code, text = run_cli(
        *f"verify --target reference {variants} --examples 1 --report {report}".split(),
        *f"--junit {junit} --markdown {markdown}".split(),
    )
    assert code == 0, text
    assert "bfloat16 is not verified here" in text
    body = json.loads(report.read_text())
    assert f"PASSED: {len(body['cases'])} cases, 0 failures" in text
    assert body["passed"] is True and body["meta"]["target"] == "reference"
    assert sorted({(c["variant"], c["case"]["dtype"]) for c in body["cases"]}) == [
        ("gqa", "float16"),
        ("gqa", "float32"),
        ("merge", "float16"),
        ("merge", "float32"),
    ]
    assert all(c["passed"] and c["comparisons"] for c in body["cases"])
    quantities = {(r["variant"], r["quantity"]) for r in body["summary"]}
    assert {("merge", "out"), ("merge", "lse"), ("gqa", "dq")} <= quantities
    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors")) == (
        "testsuites",
        str(len(body["cases"])),
        "0",
        "0",
    )
    assert [s.get("name") for s in root] == ["attnverify.merge.cpu", "attnverify.gqa.cpu"]
    page = markdown.read_text()
    assert page.startswith("## attnverify verify: passed")
    merge_fp16 = [
        c for c in body["cases"] if (c["variant"], c["case"]["dtype"]) == ("merge", "float16")
    ]
    assert f"| merge | float16 | out | {len(merge_fp16)} | 0 |" in page
    assert not records.records_path().exists(), "only the attnverify target writes records"


def test_cli_verify_failure_then_replay_round_trip(home: Path, tmp_path: Path, impls: str) -> None:
    junit = tmp_path / "j.xml"
    code, text = run_cli(
        *f"verify --target {impls}:doubled_merge --variant merge --dtype float32".split(),
        *f"--examples 3 --replay-dir {tmp_path / 'replays'} --junit {junit}".split(),
    )
    assert code == 1, text
    replays = sorted((tmp_path / "replays").glob("*.json"))
    assert len(replays) == 1
    assert f"attnverify replay {replays[0]}" in text
    assert "merge/float32/out: MISMATCH" in text
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1 and "merge/float32/out" in failures[0].get("message")
    code, text = run_cli("replay", str(replays[0]))
    assert code == 1, text
    assert f"target: {impls}:doubled_merge" in text and "MISMATCH" in text
    assert text.rstrip().splitlines()[-1].startswith("FAIL")
    code, text = run_cli("replay", str(replays[0]), "--target", "reference")
    assert code == 0, text
    assert "merge/float32/out: ok" in text and "merge/float32/lse: ok" in text


def test_cli_dtypes_go_to_the_variants_that_take_them(home: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    dtypes = "--dtype float32 --dtype float8_e5m2"
    code, text = run_cli(
        *f"verify --target reference {dtypes} --examples 1 --report {report}".split()
    )
    assert code == 0, text
    pairs = {(c["variant"], c["case"]["dtype"]) for c in json.loads(report.read_text())["cases"]}
    assert sorted(pairs) == [
        ("fp8", "float8_e5m2"),
        ("gqa", "float32"),
        ("merge", "float32"),
        ("paged", "float32"),
        ("varlen", "float32"),
    ]


def test_cli_usage_errors_exit_2(home: Path, tmp_path: Path) -> None:
    code, text = run_cli("verify", "--target", "no-such-target", "--variant", "gqa")
    assert code == 2 and "unknown --target 'no-such-target'; valid: attnverify" in text
    code, text = run_cli("verify", "--dtype", "bfloat17")
    assert code == 2 and "--dtype: dtype name must name a torch dtype" in text
    code, text = run_cli("verify", "--device", "cuda:7")
    assert code == 2 and "visible CUDA devices" in text
    code, text = run_cli("replay", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot replay" in text
    with pytest.raises(SystemExit) as info:
        run_cli("verify", "--variant", "mla")
    assert info.value.code == 2


def test_cli_status_missing_verified_stale(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_cli("status", "--device", "cpu")
    assert code == 1
    assert "run: attnverify verify --variant fp8 --device cpu" in text
    env = records.current_environment("cpu", git=False)
    for variant in records.VARIANTS:
        records.append_record(records.make_record(variant, env, cases=2, seed=0))
    code, text = run_cli("status")
    assert code == 0, text
    assert text.count("verified") == len(records.VARIANTS)
    monkeypatch.setattr(records, "_triton_version", lambda: "0.0.0")
    code, text = run_cli("status", "--variant", "gqa")
    assert code == 1
    assert "stale" in text and f"triton_version {env.triton_version} -> 0.0.0" in text


def test_cli_status_reports_corrupt_records(home: Path) -> None:
    records.records_path().parent.mkdir(parents=True)
    records.records_path().write_text("{oops\n")
    code, text = run_cli("status", "--variant", "gqa")
    assert code == 1 and "warning:" in text and "records.jsonl:1: corrupt record" in text


def test_cli_module_entry_point(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "attnverify", "status", "--variant", "merge"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "merge" in done.stdout and "missing" in done.stdout


def test_cli_bench_needs_a_gpu(home: Path) -> None:
    code, text = run_cli("bench", "--device", "cpu")
    assert code == 2 and "bench needs a GPU" in text


def test_cli_verify_interpreter_sharded_appends_one_record_per_device(home: Path) -> None:
    code, text = run_cli("verify", "--variant", "merge", "--examples", "2", "--devices", "cpu,cpu")
    assert code == 0, text
    assert text.count("record: merge verified on cpu") == 1, "two shards on one device: one record"
    loaded, problems = records.load_records()
    cases = int(text.split("PASSED: ")[1].split()[0])
    assert problems == [] and [(r.variant, r.cases) for r in loaded] == [("merge", cases)]
    code, text = run_cli("status", "--variant", "merge")
    assert code == 0 and "verified" in text


def test_cli_sharded_workers_merge_results_and_report_a_death(
    home: Path, tmp_path: Path, impls: str
) -> None:
    report = tmp_path / "r.json"
    code, text = run_cli(
        *f"verify --target {impls}:first_worker_dies --variant merge --examples 2".split(),
        *f"--devices cpu,cpu --report {report}".split(),
    )
    assert code == 1, text
    body = json.loads(report.read_text())
    assert len(body["problems"]) == 1, body["problems"]
    held = re.search(r"died \(exit code 3\) holding (\d+) merge cases", body["problems"][0])
    assert held is not None, body["problems"][0]
    drawn = draw_cases("merge", profile="ci", dtypes=["float16", "float32"], examples=2, seed=0)
    assert len(body["cases"]) + int(held.group(1)) == len(drawn)
    assert len(body["cases"]) in (len(drawn) // 2, (len(drawn) + 1) // 2)
    assert all(c["passed"] for c in body["cases"])


def test_progress_bar_plain_and_tty() -> None:
    plain = io.StringIO()
    bar = ProgressBar("gqa", stream=plain, interval_s=3600.0)
    for i in range(20):
        bar(i + 1, 20, None)
    bar.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 11, lines
    assert lines[-1].startswith("gqa [####################] 20/20 0 failed")
    assert "\r" not in plain.getvalue()

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar("varlen", stream=tty, redraw_s=0.0)

    class Failed:
        passed = False

    bar(1, None, Failed())
    bar.close()
    assert tty.getvalue().count("\r") == 2
    assert "varlen 1 cases 1 failed" in tty.getvalue()


def test_cli_records_ignore_shards_dealt_no_cases(home: Path) -> None:
    """A worker dealt none of a variant's cases (more shards than compile-affinity groups)
    reports an empty run: it must not block the variant's record, and a device that ran no
    case of the variant gets no record; a dead shard still blocks it."""
    import argparse

    from attnverify.kernels import merge_attention_states
    from attnverify.verify import check
    from attnverify.verify.cli import _append_records
    from attnverify.verify.report import RunResult

    results = check("merge", merge_attention_states, examples=1, device="cpu", seed=0).results
    assert results and all(r.passed for r in results)
    args = argparse.Namespace(seed=0, target="attnverify")
    ran = RunResult("merge", "cpu", "attnverify", results)
    empty = [RunResult("merge", "cpu", "attnverify"), RunResult("merge", "cuda:1", "attnverify")]
    out = io.StringIO()
    _append_records([ran, *empty], args, "ci", out)
    assert out.getvalue().count("record: merge verified on cpu") == 1, out.getvalue()
    assert "cuda:1" not in out.getvalue(), out.getvalue()
    dead = RunResult("merge", "cuda:1", "attnverify", problems=["worker 1 died"])
    out = io.StringIO()
    _append_records([ran, dead], args, "ci", out)
    assert out.getvalue() == "", "a dead shard must block the record"
