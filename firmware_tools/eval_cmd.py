"""`basilar eval BUNDLE PATH`: clip accuracy, streamed through the bundle exactly as on the device."""
import json

import click

from firmware_tools.cli_errors import fail_on
from firmware_tools.cli_types import FloatRange


@click.command("eval")
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (accuracy, clips, recall, confusion).")
@click.option("--noise-floor", "noise_floor", type=FloatRange(-120, 0), metavar="DBFS",
              help="Play each clip over steady white noise at this RMS level (e.g. -60) instead of digital silence, "
                   "as a live microphone hears it.")
def eval_clips(bundle_path, path, as_json, noise_floor):
    """Evaluate a bundle on a folder of labelled WAVs (labelled as for `basilar train`)."""
    from edge.bundle import load_bundle
    from firmware_tools import dataset, evaluate

    with fail_on():
        bundle = load_bundle(bundle_path)
        clips = dataset.scan_labelled(path, warn=lambda text: click.echo(text, err=True))  # not into --json
        report = evaluate.evaluate_bundle(bundle, clips, noise_floor_dbfs=noise_floor)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(evaluate.format_report(report))
