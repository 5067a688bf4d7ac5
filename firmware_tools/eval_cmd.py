"""`basilar eval BUNDLE PATH`: clip accuracy, streamed through the bundle exactly as on the device."""
import json

import click

from firmware_tools.cli_errors import fail_on


@click.command("eval")
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (accuracy, clips, recall, confusion).")
def eval_clips(bundle_path, path, as_json):
    """Evaluate a bundle on a folder of labelled WAVs (labelled as for `basilar train`)."""
    from edge.bundle import load_bundle
    from firmware_tools import dataset, evaluate

    with fail_on():
        bundle = load_bundle(bundle_path)
        clips = dataset.scan_labelled(path)
        report = evaluate.evaluate_bundle(bundle, clips)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(evaluate.format_report(report))
