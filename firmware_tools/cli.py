"""The `basilar` command. Each subcommand lives in its own module and is imported only when used."""
import sys

from firmware_tools.stop_signals import hold_stop_signals

# `basilar run` and `basilar telemetry` end cleanly on SIGINT/SIGTERM. A stop that comes while they start (the imports
# below and their own, the bundle, the input) is held for them from here; other commands keep Python's defaults. The
# command's name is the first argument: the group's only options, --help and --version, end the program.
if sys.argv[1:2] in (["run"], ["telemetry"]):
    hold_stop_signals()

import click  # after the hold: loading it is part of the start

from edge import __version__
from firmware_tools.lazy_group import LazyGroup

COMMANDS = {
    # front end (cochlea)
    "frontend": "firmware_tools.frontend_cmd:frontend",
    # models and bundles
    "train": "firmware_tools.train_cmd:train",
    "convert": "firmware_tools.convert_cmd:convert",
    "bundle": "firmware_tools.bundle_cmd:bundle",
    "eval": "firmware_tools.eval_cmd:eval_clips",
    # on-device runtime
    "run": "firmware_tools.run_cmd:run",
    "devices": "firmware_tools.run_cmd:devices",
    "eval-stream": "firmware_tools.eval_stream_cmd:eval_stream",
    "service": "firmware_tools.run_cmd:service",
    # serial telemetry
    "telemetry": "firmware_tools.telemetry_cmd:telemetry",
    # deployment
    "deploy": "firmware_tools.deploy_cmd:deploy",
    "status": "firmware_tools.deploy_cmd:status",
    # benchmarks
    "bench": "firmware_tools.bench:bench",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="basilar")
def main():
    """basilar: human-like machine hearing on small Linux devices."""


if __name__ == "__main__":
    main()
