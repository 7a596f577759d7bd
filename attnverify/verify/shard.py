"""Verification sharded over several devices: one spawned worker process per device.

`attnverify verify --devices all` draws every variant's cases once (`draw_cases`), deals them
to the workers (`deal`: cases with the same compile-affinity key go to the same worker, so few
kernels are compiled by two workers) and merges the workers' results into one report; a
worker that dies is reported with the cases it held, never lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue as queue_module
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

from attnverify.verify.case import Case
from attnverify.verify.profiles import register_profiles
from attnverify.verify.report import ProgressBar, RunResult
from attnverify.verify.runner import check, dtype_seed
from attnverify.verify.specs import get_spec
from attnverify.verify.targets import resolve_target

WORKER_POLL_S = 0.5


def draw_cases(
    variant: str,
    *,
    profile: str,
    dtypes: Sequence[str],
    examples: int | None,
    seed: int,
) -> list[Any]:
    """The cases of a sharded run: per dtype, the spec's pinned edge cases in that dtype, then
    `examples` cases drawn with the same hypothesis seeds (`dtype_seed`) and profile as
    `check`. The draw is the same for any worker count (`--devices` with one device included);
    `check`'s own run, which executes cases while hypothesis draws, drew 6 of 56 differently on
    an H200, so scaling is measured between `--devices` runs.
    """
    register_profiles()
    spec = get_spec(variant)
    count = examples if examples is not None else settings.get_profile(profile).max_examples
    cases: list[Any] = []
    for index, dtype in enumerate(dtypes):
        cases.extend(dataclasses.replace(case, dtype=dtype) for case in spec.pinned_cases())

        @settings(
            parent=settings.get_profile(profile),
            max_examples=count,
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @hypothesis_seed(dtype_seed(seed, index, dtype))
        @given(spec.strategy(profile, [dtype]))
        def collect(case: Any) -> None:
            cases.append(case)

        collect()
    return cases


def compile_affinity(case: Case) -> tuple:
    """The case's kernel-specialisation key (its spec's `compile_affinity`): cases with equal
    keys compile the same kernels and go to one worker."""
    return get_spec(case.variant).compile_affinity(case)


def deal(cases: Sequence[Case], workers: int) -> list[list[Case]]:
    """`cases` split over `workers`: whole compile-affinity groups (`compile_affinity`), the
    largest group first to the worker holding the fewest cases; each worker keeps the draw
    order. Every case is dealt exactly once."""
    groups: dict[tuple, list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault(repr(compile_affinity(case)), []).append(index)
    held: list[list[int]] = [[] for _ in range(workers)]
    for members in sorted(groups.values(), key=len, reverse=True):
        min(held, key=len).extend(members)
    return [[cases[i] for i in sorted(indices)] for indices in held]


def run_worker(
    rank: int,
    device: str,
    jobs: list[tuple[str, list[Any]]],
    options: dict[str, Any],
    results: Any,
    cpu_threads: int,
) -> None:
    """Worker `rank`'s process on `device`: `check(cases=...)` per variant, results on the queue.

    Messages: ("progress", rank, passed), ("run", rank, variant, results, errors, seconds),
    ("skip", rank, variant, why), ("done", rank). A crash shows as a dead worker in the parent.
    `cpu_threads`: torch's intra-op threads here (the comparisons run in float64 on the CPU);
    workers that each took every core would oversubscribe the host.
    """
    torch.set_num_threads(cpu_threads)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    else:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for variant, cases in jobs:
        try:
            impl = resolve_target(options["target"], variant)
        except ValueError as exc:
            results.put(("skip", rank, variant, str(exc)))
            continue
        try:
            report = check(
                variant,
                impl,
                cases=cases,
                device=device,
                grads=options["grads"],
                profile=options["profile"],
                progress=lambda _d, _t, r: results.put(("progress", rank, bool(r.passed))),
                replay_dir=options["replay_dir"],
                target=options["target"],
            )
            message = ("run", rank, variant, report.results, report.errors, report.seconds)
        except Exception:
            message = ("run", rank, variant, [], [traceback.format_exc(limit=6)], 0.0)
        results.put(message)
    results.put(("done", rank))


def verify_sharded(
    plan: dict[str, list[list[Case]]], devices: list[torch.device], options: dict[str, Any]
) -> tuple[list[RunResult], list[str]]:
    """Run `plan` (variant -> one list of cases per device) with one spawned worker process per
    device and merge what comes back; a worker that dies is reported with the cases it held.

    `options`: target, grads, profile, replay_dir (as `check` takes them). Returns the runs
    (one per variant and device) and the skips the workers reported.
    """
    target = options["target"]
    skipped: list[str] = []
    context = multiprocessing.get_context("spawn")
    inbox = context.Queue()
    workers = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu_threads = max(1, (cores or 1) // len(devices))
    for rank, device in enumerate(devices):
        jobs = [(variant, shards[rank]) for variant, shards in plan.items()]
        args = (rank, str(device), jobs, options, inbox, cpu_threads)
        proc = context.Process(target=run_worker, args=args)
        proc.start()
        workers.append(proc)
    total = sum(len(c) for shards in plan.values() for c in shards)
    bar = ProgressBar(f"{len(plan)} variants on {len(devices)} devices")
    received: dict[tuple[str, int], RunResult] = {}
    finished: set[int] = set()
    dead: dict[int, int | None] = {}

    def handle(message: tuple[Any, ...]) -> None:
        kind, rank = message[0], message[1]
        if kind == "progress":
            bar(bar.count + 1, total, _Verdict(message[2]))
        elif kind == "run":
            _, _, variant, results, errors, seconds = message
            received[(variant, rank)] = RunResult(
                variant, str(devices[rank]), target, list(results), list(errors), seconds
            )
        elif kind == "skip":
            skipped.append(f"{message[2]} on {devices[rank]}: {message[3]}")
        elif kind == "done":
            finished.add(rank)

    while len(finished | set(dead)) < len(workers):
        try:
            handle(inbox.get(timeout=WORKER_POLL_S))
        except queue_module.Empty:
            for rank, proc in enumerate(workers):
                if rank not in finished and rank not in dead and not proc.is_alive():
                    dead[rank] = proc.exitcode
    with contextlib.suppress(queue_module.Empty):
        while True:
            handle(inbox.get(timeout=WORKER_POLL_S))
    bar.close()
    for proc in workers:
        proc.join()
    runs = []
    for variant in plan:
        for rank, device in enumerate(devices):
            run = received.get((variant, rank))
            if run is None and rank in dead:
                held = plan[variant][rank]
                listed = "; ".join(c.short() for c in held[:5]) + (" ..." if len(held) > 5 else "")
                problem = (
                    f"worker {rank} on {device} died (exit code {dead[rank]}) holding "
                    f"{len(held)} {variant} cases: {listed}"
                )
                run = RunResult(variant, str(device), target, problems=[problem])
            if run is not None:
                runs.append(run)
    return runs, skipped


class _Verdict:
    """A stand-in result for the progress bar (workers send only pass/fail)."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed


__all__ = ["compile_affinity", "deal", "draw_cases", "run_worker", "verify_sharded"]
