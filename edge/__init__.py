"""What runs on the device: front end, model runner, detector, audio sources, telemetry, bundles, run loop."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("basilar")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
