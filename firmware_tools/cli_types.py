"""Option types, and what the commands ask of their options, shared by the commands."""
import math

import click

from edge.telemetry import BAUD_RANGE


def given_options(ctx: click.Context, names) -> list[str]:
    """The options among `names` (parameter names) given on the command line rather than left at their defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in names}
    unknown = [name for name, source in sources.items() if source is None]  # click's answer for a name it lacks
    if unknown:  # a misspelt name would otherwise count as given (or, tested the other way, never)
        raise ValueError(f"{ctx.command.name} has no option {', '.join(unknown)}")
    return [name for name, source in sources.items() if source is not click.core.ParameterSource.DEFAULT]


def option_flag(ctx: click.Context, name: str) -> str:
    """How the command line spells the option of parameter `name` (`--device-id` for device_id)."""
    return next(param.opts[0] for param in ctx.command.params if param.name == name)


class FloatRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinities: every comparison with NaN is false, so click's own range
    check lets "nan" through, and a bound on one side lets "inf" through the other."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


BAUD_RATES = click.IntRange(*BAUD_RANGE)  # a serial line's speed (edge.telemetry.BAUD_RANGE says why)
