"""The `attnverify` command (also `python -m attnverify`): verify, replay, status, bench.

    attnverify verify [--variant V ...] [--target T] [--dtype D ...] [--examples N] [--seed S]
                      [--profile ci|device|thorough] [--device cuda:0|cpu] [--devices all]
                      [--jobs N] [--report out.json] [--junit out.xml] [--markdown out.md]
                      [--replay-dir DIR] [--no-grads]
    attnverify replay FILE [--target T] [--device D] [--no-grads]
    attnverify status [--variant V ...] [--device D]
    attnverify bench [--variant V ...] [--device D] [--target T] [--max-shapes N]
                     [--json out.json] [--plot out.png]

Exit status: 0 everything passed (status: every variant verified), 1 a failure (status: some
variant stale or missing), 2 a usage error or nothing to run.

On a CPU device (`--device cpu`, or no GPU) the kernels run through the Triton interpreter:
`TRITON_INTERPRET=1` is set here, before anything imports a kernel module, and the default
profile is `ci` (a budget that verifies every variant in a few minutes). The interpreter cannot
multiply bfloat16 correctly (triton#11584), so bfloat16 is verified on GPUs only.

Heavy imports (the harness, the kernels, triton) happen inside the commands, after the device,
and so the interpreter setting, is known.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from attnverify import records
from attnverify.kernels import _autotune as autotune_policy
from attnverify.verify.case import dtype_from_name
from attnverify.verify.profiles import PROFILES
from attnverify.verify.report import (
    ProgressBar,
    RunResult,
    format_table,
    summary_rows,
    summary_table,
    utc_now,
    write_json_report,
    write_junit,
    write_markdown,
)
from attnverify.verify.targets import TARGET_NAMES

VARIANTS = records.VARIANTS
INTERPRET_ENV = "TRITON_INTERPRET"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------- devices


def select_device(name: str | None) -> torch.device:
    """The device to run on (None: cuda:current if a GPU is visible, else cpu).

    A CPU device turns the Triton interpreter on (`TRITON_INTERPRET=1`) unless the caller set
    `TRITON_INTERPRET` already. Must run before any kernel module is imported.

    Raises:
        ValueError: a device string torch does not parse, or a CUDA device that is not there.
    """
    try:
        device = records.normalize_device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device must be 'cpu' or 'cuda:N'; got {name!r} ({exc})") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is None or device.index >= count:
            raise ValueError(f"--device {name!r}: this machine has {count} visible CUDA devices")
    elif device.type == "cpu":
        os.environ.setdefault(INTERPRET_ENV, "1")
    else:
        raise ValueError(f"--device must be 'cpu' or 'cuda:N'; got {name!r}")
    return device


def _devices_list(spec: str) -> list[torch.device]:
    """`--devices all` (every visible GPU) or a comma list "cuda:0,cuda:1"."""
    if spec == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--devices all needs CUDA devices; none is visible")
        return [torch.device("cuda", i) for i in range(count)]
    return [select_device(part.strip()) for part in spec.split(",") if part.strip()]


# ---------------------------------------------------------------- verify


def _resolve(target: str, variant: str) -> Any:
    from attnverify.verify.targets import resolve_target

    return resolve_target(target, variant)


def _examples(args: argparse.Namespace, profile: str) -> int:
    """`--examples`, else the profile's count from `attnverify.verify.profiles.PROFILES` (named
    explicitly: hypothesis ships a built-in profile called "ci" that may shadow ours)."""
    return args.examples if args.examples is not None else PROFILES[profile]["max_examples"]


def _dtype_names(args: argparse.Namespace, variant: str, device: torch.device) -> list[str]:
    """The dtypes to draw for `variant`: those of `--dtype` it takes (fp8 names for fp8,
    the others for the rest), else the spec's defaults on `device`."""
    from attnverify.verify.specs import get_spec

    if args.dtype:
        return [d for d in args.dtype if d.startswith("float8") == (variant == "fp8")]
    return list(get_spec(variant).default_dtypes(device))


def _verify_one_device(
    args: argparse.Namespace, variants: Sequence[str], device: torch.device, profile: str
) -> tuple[list[RunResult], list[str]]:
    """Run `check` per variant on one device with a progress bar; returns runs and skips."""
    from attnverify.verify.runner import check

    runs: list[RunResult] = []
    skipped: list[str] = []
    for variant in variants:
        dtypes = _dtype_names(args, variant, device)
        if not dtypes:
            skipped.append(f"{variant}: takes none of --dtype {', '.join(args.dtype)}")
            continue
        try:
            impl = _resolve(args.target, variant)
        except ValueError as exc:
            if args.target == "attnverify" or args.variant:
                run = RunResult(variant, str(device), args.target, problems=[str(exc)])
                runs.append(run)
            else:
                skipped.append(f"{variant}: {exc}")
            continue
        bar = ProgressBar(f"{variant} on {device}")
        report = check(
            variant,
            impl,
            examples=_examples(args, profile),
            seed=args.seed,
            device=device,
            dtypes=dtypes,
            grads=args.grads,
            profile=profile,
            progress=bar,
            replay_dir=args.replay_dir,
            target=args.target,
        )
        bar.close()
        runs.append(
            RunResult(
                variant,
                str(device),
                args.target,
                results=list(report.results),
                problems=list(report.errors),
                seconds=report.seconds,
            )
        )
    return runs, skipped


def _verify_sharded(
    args: argparse.Namespace, variants: Sequence[str], devices: list[torch.device], profile: str
) -> tuple[list[RunResult], list[str]]:
    """Draw every variant's cases here and deal them to one worker per device, whole
    compile-affinity groups each (`attnverify.verify.shard.deal`)."""
    from attnverify.verify.shard import deal, draw_cases, verify_sharded

    plan: dict[str, list[list[Any]]] = {}
    skipped: list[str] = []
    for variant in variants:
        dtypes = _dtype_names(args, variant, devices[0])
        if not dtypes:
            skipped.append(f"{variant}: takes none of --dtype {', '.join(args.dtype)}")
            continue
        cases = draw_cases(
            variant,
            profile=profile,
            dtypes=dtypes,
            examples=_examples(args, profile),
            seed=args.seed,
        )
        plan[variant] = deal(cases, len(devices))
    options = {
        "target": args.target,
        "grads": args.grads,
        "profile": profile,
        "replay_dir": args.replay_dir,
    }
    runs, worker_skips = verify_sharded(plan, devices, options)
    return runs, skipped + worker_skips


def _run_meta(args: argparse.Namespace, devices: list[torch.device], profile: str) -> dict:
    env = records.current_environment(devices[0])
    return {
        "command": "attnverify " + " ".join(args.argv),
        "target": args.target,
        "profile": profile,
        "seed": args.seed,
        "devices": ", ".join(map(str, devices)),
        "arch": env.arch,
        "device_name": env.device_name,
        "torch": env.torch_version,
        "triton": env.triton_version,
        "git_sha": env.git_sha or "",
        "interpreter": os.environ.get(INTERPRET_ENV, "0") not in ("", "0"),
        "time": utc_now(),
    }


def _append_records(
    runs: Sequence[RunResult], args: argparse.Namespace, profile: str, out: TextIO
) -> None:
    """One record per (variant, device) for variants that passed on every device (shards that
    ran on the same device are one record; a shard dealt none of a variant's cases neither
    blocks nor makes its record, a device with no case of the variant gets none)."""
    by_variant: dict[str, dict[str, list[RunResult]]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, {}).setdefault(run.device, []).append(run)
    for variant, by_device in by_variant.items():
        group = [run for shards in by_device.values() for run in shards]
        if not all(run.passed for run in group) or not any(run.results for run in group):
            continue
        for device, shards in by_device.items():
            cases = sum(len(run.results) for run in shards)
            if not cases:
                continue
            record = records.make_record(
                variant,
                records.current_environment(device),
                cases=cases,
                seed=args.seed,
                profile=profile,
                target=args.target,
                summary=[row.to_dict() for row in summary_rows(shards)],
            )
            path = records.append_record(record)
            out.write(f"record: {variant} verified on {device} -> {path}\n")


def _option_problem(args: argparse.Namespace, profile: str) -> str | None:
    """What is wrong with the verify options (a dtype name, the target, the profile), or None."""
    for name in args.dtype or ():
        try:
            dtype_from_name(name)
        except ValueError as exc:
            return f"--dtype: {exc}"
    if args.target not in TARGET_NAMES and ":" not in args.target:
        return f"unknown --target {args.target!r}; valid: {', '.join(TARGET_NAMES)}"
    if profile not in PROFILES:
        valid = ", ".join(PROFILES)
        return f"profile (--profile, $ATTNVERIFY_PROFILE) must be one of {valid}; got {profile!r}"
    return None


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """`attnverify verify`: see the module docstring."""
    try:
        if args.devices:
            devices = _devices_list(args.devices)
        else:
            devices = [select_device(args.device)]
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return EXIT_USAGE
    # --jobs N: N worker processes per device (cases dealt by compile affinity); on a GPU the
    # run is bound by Triton's compiles, which then proceed in parallel on the host's cores.
    devices = [device for device in devices for _ in range(args.jobs)]
    interpreter = devices[0].type == "cpu"
    profile = (
        args.profile or os.environ.get("ATTNVERIFY_PROFILE") or ("ci" if interpreter else "device")
    )
    problem = _option_problem(args, profile)
    if problem:
        out.write(f"error: {problem}\n")
        return EXIT_USAGE
    variants = list(dict.fromkeys(args.variant or VARIANTS))
    if interpreter:
        out.write(
            "CPU: kernels run through the Triton interpreter (TRITON_INTERPRET=1), profile "
            f"{profile!r}; bfloat16 is not verified here (triton#11584): run on a GPU for it.\n"
        )
    else:
        # One config per autotune key (attnverify.kernels._autotune): a drawn run compiles
        # fewer kernels and still exercises every config.
        autotune = os.environ.setdefault(autotune_policy.ENV, "rotate")
        out.write(f"GPU: autotune policy {autotune!r} (${autotune_policy.ENV}: 1, 0, rotate)\n")
    start = time.monotonic()
    if args.devices or len(devices) > 1:  # --devices: one worker process per device, even one
        runs, skipped = _verify_sharded(args, variants, devices, profile)
    else:
        runs, skipped = _verify_one_device(args, variants, devices[0], profile)
    seconds = time.monotonic() - start
    for line in skipped:
        out.write(f"skipped {line}\n")
    if not runs:
        out.write(f"error: target {args.target!r} can run none of {', '.join(variants)}\n")
        return EXIT_USAGE
    out.write("\n" + summary_table(summary_rows(runs)) + "\n")
    for run in runs:
        for problem in run.problems:
            out.write(f"\nFAILED {run.variant} on {run.device}: {problem}\n")
        for result in run.failures:
            out.write(f"\n{result}\n")
    meta = {**_run_meta(args, devices, profile), "seconds": round(seconds, 3)}
    if args.report:
        out.write(f"report: {write_json_report(args.report, runs, meta)}\n")
    if args.junit:
        out.write(f"junit: {write_junit(args.junit, runs)}\n")
    if args.markdown:
        out.write(f"markdown: {write_markdown(args.markdown, runs, meta)}\n")
    if args.target == "attnverify":
        _append_records(runs, args, profile, out)
    passed = all(run.passed for run in runs)
    cases = sum(len(run.results) for run in runs)
    failed = sum(len(run.failures) + len(run.problems) for run in runs)
    out.write(
        f"\n{'PASSED' if passed else 'FAILED'}: {cases} cases, {failed} failures, {seconds:.1f}s\n"
    )
    return EXIT_OK if passed else EXIT_FAILED


# ---------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    """`attnverify replay FILE`: re-run a saved case, print every comparison."""
    import json

    try:
        device = select_device(args.device)
        saved = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        out.write(f"error: cannot replay {args.file}: {exc}\n")
        return EXIT_USAGE
    from attnverify.verify.case import Case
    from attnverify.verify.runner import replay

    try:
        case = Case.load(args.file)
        target = args.target or saved.get("target") or "attnverify"
        impl = _resolve(target, case.variant)
    except ValueError as exc:
        out.write(f"error: cannot replay {args.file}: {exc}\n")
        return EXIT_USAGE
    result = replay(args.file, impl, device=device, grads=False if not args.grads else None)
    out.write(f"case: {case.short()}\ntarget: {target}, device: {device}\n")
    if result.error:
        out.write(f"error: {result.error}\n")
    for comparison in result.comparisons:
        out.write(f"{comparison}\n")
    out.write(f"{'PASS' if result.passed else 'FAIL'} ({result.seconds:.2f}s)\n")
    return EXIT_OK if result.passed else EXIT_FAILED


# ---------------------------------------------------------------- status


def _status_details(status: records.RecordStatus, device: torch.device) -> str:
    from attnverify.kernels._gate import verify_command

    record = status.record
    if status.state == "verified" and record is not None:
        return f"{record.cases} cases, seed {record.seed}, {record.time}"
    if status.state == "stale" and record is not None:
        changes = []
        for name in status.changed:
            old, new = str(getattr(record, name)), status.current[name]
            if name == "kernel_sha":
                old, new = old[:12], new[:12]
            changes.append(f"{name} {old} -> {new}")
        return (
            "; ".join(changes)
            + f" (record of {record.time}); run: "
            + verify_command(status.variant, device)
        )
    return "run: " + verify_command(status.variant, device)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """`attnverify status`: verified / stale (which fields changed) / missing, per variant."""
    try:
        device = select_device(args.device)
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return EXIT_USAGE
    env = records.current_environment(device, git=False)
    loaded, problems = records.load_records()
    out.write(
        f"device {device}: {env.device_name} ({env.arch}), torch {env.torch_version}, "
        f"triton {env.triton_version or 'not installed'}\nrecords: {records.records_path()}\n"
    )
    for problem in problems:
        out.write(f"warning: {problem}\n")
    rows = []
    all_verified = True
    for variant in dict.fromkeys(args.variant or VARIANTS):
        status = records.record_status(variant, device, records=loaded, env=env)
        all_verified &= status.state == "verified"
        rows.append((variant, status.state, _status_details(status, device)))
    out.write(format_table(("variant", "state", "details"), rows) + "\n")
    return EXIT_OK if all_verified else EXIT_FAILED


# ---------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    """`attnverify bench`: see `attnverify.verify.bench`."""
    from attnverify.verify import bench

    return bench.run(args, out)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="attnverify",
        description="Verify attention kernels against float64 oracles; replay, status, bench.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    verify = sub.add_parser("verify", help="randomized verification of every variant")
    _variant_option(verify)
    verify.add_argument(
        "--target",
        default="attnverify",
        help="attnverify (default), reference, torch-sdpa, torch-flex, torch-varlen, "
        "or module:function",
    )
    verify.add_argument(
        "--dtype", action="append", help="input dtype to draw, repeatable (default: per variant)"
    )
    verify.add_argument(
        "--examples", type=_positive, help="cases per variant and dtype (default: profile)"
    )
    verify.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    verify.add_argument(
        "--profile", choices=tuple(PROFILES), help="default: ci on the CPU, device on a GPU"
    )
    _device_option(verify)
    verify.add_argument(
        "--devices", help="'all' (one worker per visible GPU) or a list 'cuda:0,cuda:1'"
    )
    verify.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        help="worker processes per device (default 1); a GPU run is bound by Triton compiles, "
        "which N workers do in parallel",
    )
    verify.add_argument("--report", type=Path, help="write a JSON report here")
    verify.add_argument("--junit", type=Path, help="write JUnit XML here")
    verify.add_argument("--markdown", type=Path, help="write a Markdown summary here")
    verify.add_argument(
        "--replay-dir",
        type=Path,
        help="where failing cases go (default $ATTNVERIFY_HOME/failures or ./attnverify-failures)",
    )
    verify.add_argument(
        "--no-grads", dest="grads", action="store_false", help="forward quantities only"
    )
    verify.set_defaults(func=cmd_verify)

    replay = sub.add_parser("replay", help="re-run one saved failing case")
    replay.add_argument("file", type=Path, help="a replay JSON file written by verify")
    replay.add_argument("--target", help="default: the target recorded in the file")
    _device_option(replay)
    replay.add_argument("--no-grads", dest="grads", action="store_false", help="forward only")
    replay.set_defaults(func=cmd_replay)

    status = sub.add_parser("status", help="which variants are verified on this device")
    _variant_option(status)
    _device_option(status)
    status.set_defaults(func=cmd_status)

    bench = sub.add_parser("bench", help="time our kernels and the torch baselines")
    _variant_option(bench)
    _device_option(bench)
    bench.add_argument("--json", type=Path, help="write result rows as JSON here")
    bench.add_argument("--plot", type=Path, help="draw TFLOP/s or GB/s vs length (matplotlib)")
    bench.add_argument("--target", default="attnverify", help="what 'ours' is (default attnverify)")
    bench.add_argument(
        "--max-shapes",
        type=_positive,
        help="time at most this many shapes per variant (smoke runs)",
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _variant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="repeatable; default: all variants"
    )


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda:N or cpu (default: cuda if available, else cpu)")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args, out if out is not None else sys.stdout)


__all__ = ["build_parser", "main", "select_device"]
