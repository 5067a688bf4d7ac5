"""`basilar bench ...`: the benchmarks behind every speed and memory figure in the README."""
import click

from firmware_tools.lazy_group import LazyGroup

BENCHMARKS = {
    "frontend": "firmware_tools.bench_frontend:bench_frontend",
    "model": "firmware_tools.bench_model:bench_model",
    "run": "firmware_tools.bench_run:bench_run",
    "telemetry": "firmware_tools.bench_telemetry:bench_telemetry",
}


@click.group(cls=LazyGroup, lazy_commands=BENCHMARKS)
def bench():
    """Measure speed and memory on this machine (one core)."""
