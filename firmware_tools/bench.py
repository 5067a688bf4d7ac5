"""`basilar bench ...`: the benchmarks behind every speed and memory figure in the README."""
import os

import click

from firmware_tools.lazy_group import LazyGroup

BENCHMARKS = {
    "frontend": "firmware_tools.bench_frontend:bench_frontend",
    "model": "firmware_tools.bench_model:bench_model",
    "run": "firmware_tools.bench_run:bench_run",
    "soak": "firmware_tools.bench_soak:bench_soak",
    "telemetry": "firmware_tools.bench_telemetry:bench_telemetry",
}


@click.group(cls=LazyGroup, lazy_commands=BENCHMARKS)
def bench():
    """Measure speed and memory on this machine (one core)."""


def last_cpu() -> int | None:
    """The last CPU this process may use, where a benchmark pins what it times; None where the OS cannot pin."""
    return sorted(os.sched_getaffinity(0))[-1] if hasattr(os, "sched_setaffinity") else None


def pin_to_one_cpu(cpu: int | None = None) -> int | None:
    """Pin this process to one CPU (default: the last one it may use), as on a busy device; returns it, or None
    where the OS cannot or will not pin (the benchmark then runs where the scheduler puts it)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = last_cpu() if cpu is None else cpu
    if cpu not in allowed:
        raise click.BadParameter(f"CPU {cpu} is not available to this process; choose one of {allowed}",
                                 param_hint="--cpu")
    return pin(0, cpu)


def pin(pid: int, cpu: int | None) -> int | None:
    """Pin process pid (0: this one) to cpu; returns it, or None where the OS refuses (a cpuset or seccomp policy
    that forbids it: EPERM, EINVAL), so that a benchmark runs unpinned and says so instead of failing."""
    if cpu is None:
        return None
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        return None
    return cpu


def pinning(cpu: int | None) -> str:
    """How a report names where the timed code ran."""
    return "not pinned" if cpu is None else f"one core (cpu {cpu})"
