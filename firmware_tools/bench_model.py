"""`basilar bench model`: size and per-step latency of a bundle's int8 step model on one core."""
import json
import time

import click
import numpy as np

from firmware_tools.bench import pin_to_one_cpu
from firmware_tools.cli_errors import fail_on


def time_steps(runner, frames: np.ndarray, repeats: int) -> np.ndarray:
    """Seconds per StepRunner.step, one sample per step (frames cycled)."""
    times = np.empty(repeats)
    for i in range(repeats):
        frame = frames[i % len(frames)]
        t0 = time.perf_counter()
        runner.step(frame)
        times[i] = time.perf_counter() - t0
    return times


@click.command("bench_model")
@click.argument("bundle_arg", metavar="[BUNDLE]", required=False)
@click.option("--bundle", "bundle_opt", help="Bundle to time ('default', the shipped one, when neither this nor "
                                            "BUNDLE is given); `bench run` and `run` take it this way too.")
@click.option("--steps", type=click.IntRange(100, 10_000_000), default=20000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_model(bundle_arg, bundle_opt, steps, as_json):
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
        t = time_steps(runner, frames, steps) * 1e6
    result = {
        "bundle": bundle.id, "runtime": runner.runtime, "cpu": cpu,
        "model_bytes": bundle.step_model_path.stat().st_size,
        "step_us_mean": float(t.mean()), "step_us_p50": float(np.percentile(t, 50)),
        "step_us_p99": float(np.percentile(t, 99)), "steps": steps,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"step model {result['model_bytes']} bytes on {runner.runtime}, one core (cpu {cpu}): "
                   f"mean {result['step_us_mean']:.1f} us, p50 {result['step_us_p50']:.1f} us, "
                   f"p99 {result['step_us_p99']:.1f} us per step ({steps} steps)")
