"""SIGINT and SIGTERM for the long-running commands (`basilar run`, `basilar telemetry`).

Both are routed to one handler while the command works and the previous handlers are put back after. Installed
explicitly: SIGTERM (systemd, `timeout`) has no Python handler by default, and a process started as a background
job inherits SIGINT ignored.
"""
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def route_stop_signals(handler):
    """Send SIGINT and SIGTERM to handler(signum, frame); returns a function that puts the previous handlers back."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)

    def restore():
        for signum, old in previous.items():
            signal.signal(signum, old)
    return restore


@contextlib.contextmanager
def stop_signals_routed_to(handler):
    """route_stop_signals for the duration of a with-block."""
    restore = route_stop_signals(handler)
    try:
        yield
    finally:
        restore()
