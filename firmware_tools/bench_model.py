"""`basilar bench model`: size and per-step latency of a bundle's int8 step model on one core.

The mean step is this thread's CPU time, as `bench run`'s figures are, so that other programs taking the core do
not count as the model's; the wall-clock mean and percentiles per step are shown beside it."""
import json
import time

import click
import numpy as np

from firmware_tools.bench import pin_to_one_cpu, pinning
from firmware_tools.cli_errors import fail_on


TARGETS = {"step_us_mean": 20.0, "model_bytes": 100_000}


def time_steps(runner, frames: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """Mean CPU and wall seconds per StepRunner.step over a tight loop (the clocks read once around it: read around
    each step, the thread clock's own cost would add ~2 us), then each step's wall seconds in a second pass."""
    c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
    for i in range(repeats):
        runner.step(frames[i % len(frames)])
    mean_cpu, mean_wall = (time.thread_time_ns() - c0) / repeats / 1e9, (time.perf_counter_ns() - w0) / repeats / 1e9
    wall = np.empty(repeats)
    for i in range(repeats):
        frame = frames[i % len(frames)]
        w0 = time.perf_counter_ns()
        runner.step(frame)
        wall[i] = time.perf_counter_ns() - w0
    return mean_cpu, mean_wall, wall / 1e9


@click.command("bench_model")
@click.argument("bundle_arg", metavar="[BUNDLE]", required=False)
@click.option("--bundle", "bundle_opt", help="Bundle to time ('default', the shipped one, when neither this nor "
                                            "BUNDLE is given); `bench run` and `run` take it this way too.")
@click.option("--steps", type=click.IntRange(100, 10_000_000), default=20000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--check", is_flag=True, help="Exit non-zero when a target is missed.")
def bench_model(bundle_arg, bundle_opt, steps, as_json, check):
    """Time one streaming step of the int8 model (target: <= 20 us on one core)."""
    from edge.bundle import load_bundle
    from edge.frontend import Frontend
    from edge.runner import StepRunner

    if bundle_arg and bundle_opt and bundle_arg != bundle_opt:
        raise click.UsageError(f"two bundles given ({bundle_arg} and --bundle {bundle_opt}); give one")
    bundle_path = bundle_opt or bundle_arg or "default"
    with fail_on():
        bundle = load_bundle(bundle_path)
        cpu = pin_to_one_cpu()
        runner = StepRunner(bundle, num_threads=1)
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(bundle.frontend_config.sample_rate * 2) * 3000).astype(np.int16)
        frames = Frontend(bundle.frontend_config).process(noise)
        time_steps(runner, frames, 500)  # warm up
        mean_cpu, mean_wall, wall = time_steps(runner, frames, steps)
        wall = wall * 1e6
    result = {
        "bundle": bundle.id, "runtime": runner.runtime, "cpu": cpu,
        "model_bytes": bundle.step_model_path.stat().st_size,
        "step_us_mean": mean_cpu * 1e6, "step_us_wall_mean": mean_wall * 1e6,
        "step_us_p50": float(np.percentile(wall, 50)), "step_us_p99": float(np.percentile(wall, 99)), "steps": steps,
    }
    missed = [name for name, limit in TARGETS.items() if result[name] > limit]
    result["targets_met"] = not missed
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"step model {result['model_bytes']} bytes on {runner.runtime}, {pinning(cpu)}: "
                   f"mean {result['step_us_mean']:.1f} us of CPU time per step; wall clock mean "
                   f"{result['step_us_wall_mean']:.1f} us, p50 {result['step_us_p50']:.1f} us, p99 "
                   f"{result['step_us_p99']:.1f} us ({steps} steps)")
        click.echo(f"targets: mean step <= {TARGETS['step_us_mean']:g} us, model <= {TARGETS['model_bytes']:,} bytes: "
                   + ("met" if not missed else f"MISSED ({', '.join(missed)})"))
    if check and missed:
        raise click.ClickException(f"target(s) missed: {', '.join(missed)}")
