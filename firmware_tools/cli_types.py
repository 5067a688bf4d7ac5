"""Option types shared by the commands."""
import math

import click


class FloatRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinities: every comparison with NaN is false, so click's own range
    check lets "nan" through, and a bound on one side lets "inf" through the other."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# A serial line's speed: B0 hangs a real tty up; past the rates Linux names (B4000000) pyserial asks the driver for a
# custom rate (USB adapters run at 6 or 12 Mbaud), up to the largest its termios call takes (2^31 - 1).
BAUD_RATES = click.IntRange(50, 2**31 - 1)
