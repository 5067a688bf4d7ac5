"""Turn expected failures into one-line CLI errors (non-zero exit, no traceback)."""
import contextlib
import importlib.util

import click


def require_extra(module: str, extra: str, command: str, install: str | None = None) -> None:
    """A one-line error when `command` needs a package a device install leaves out (tensorflow, scipy, ...);
    install: what to install instead of the whole extra."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a broken or blocked installation of it
        found = False
    if not found:
        raise click.ClickException(f"`basilar {command}` needs {module}, from basilar's {extra} extra: "
                                   f"pip install {install or repr(f'basilar[{extra}]')}")


def expected_errors() -> tuple:
    """The failures a user can cause and fix: bad files, bad bundles, bad models, missing runtimes."""
    from edge.bundle import BundleError
    from edge.frontend import FrontendConfigError
    from edge.runner import RuntimeUnavailable

    # ConversionError and the others not named here are ValueErrors.
    return (ValueError, OSError, BundleError, FrontendConfigError, RuntimeUnavailable)


@contextlib.contextmanager
def fail_on(*kinds):
    """Report `kinds` (default: expected_errors()) as a clean click error with exit code 1."""
    kinds = kinds or expected_errors()
    try:
        yield
    except click.ClickException:
        raise
    except kinds as exc:
        raise click.ClickException(str(exc) or type(exc).__name__) from None
