"""SIGINT and SIGTERM for the long-running commands (`basilar run`, `basilar telemetry`).

Both are routed to one handler while the command works and the previous handlers are put back after. Installed
explicitly: SIGTERM (systemd, `timeout`) has no Python handler by default, and a process started as a background
job inherits SIGINT ignored.

Before the command routes them (while Python imports click, numpy and the TFLite runtime) they are held: the first
one is kept and handed to the command's handler the moment it is routed, so a stop that comes while the command
starts ends it as cleanly as one a moment later. A signal that comes before Python runs `basilar` at all still
kills the process: nothing can catch it there.
"""
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_before_hold = {}  # the handlers hold_stop_signals replaced
_held = None  # the first stop signal it kept, not yet handed on


def _keep(signum, frame):
    global _held
    if _held is not None and signum == signal.SIGINT:  # a second Ctrl-C interrupts at once, as later on
        raise KeyboardInterrupt
    if _held is None:
        _held = signum


def hold_stop_signals() -> None:
    """Keep a SIGINT or SIGTERM that comes before route_stop_signals, for the handler it installs."""
    _before_hold.update((signum, signal.getsignal(signum)) for signum in STOP_SIGNALS)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _keep)


def route_stop_signals(handler):
    """Send SIGINT and SIGTERM to handler(signum, frame), a held one at once; returns a function that puts the
    previous handlers back (those from before the hold)."""
    global _held
    previous = {}
    for signum in STOP_SIGNALS:
        old = signal.getsignal(signum)
        previous[signum] = _before_hold[signum] if old is _keep else old
        signal.signal(signum, handler)

    def restore():
        for signum, old in previous.items():
            signal.signal(signum, old)

    held, _held = _held, None
    if held is not None:
        try:
            handler(held, None)
        except BaseException:  # the handler's way to stop (KeyboardInterrupt): the caller never gets restore
            restore()
            raise
    return restore


@contextlib.contextmanager
def stop_signals_routed_to(handler):
    """route_stop_signals for the duration of a with-block."""
    restore = route_stop_signals(handler)
    try:
        yield
    finally:
        restore()
