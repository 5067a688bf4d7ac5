"""What the commands ask of their options: given on the command line, or left at the default."""
import click
import pytest

from firmware_tools.cli_types import given_options


@click.command()
@click.option("--keep", type=int, default=3)
@click.option("--rate", type=int)
@click.pass_context
def probe(ctx, keep, rate):
    return given_options(ctx, ["keep", "rate"])


def test_given_options_are_those_on_the_command_line_even_when_they_equal_the_default():
    assert probe.main([], standalone_mode=False) == []
    assert probe.main(["--keep", "3"], standalone_mode=False) == ["keep"]
    assert probe.main(["--rate", "8000", "--keep", "4"], standalone_mode=False) == ["keep", "rate"]


def test_a_name_the_command_lacks_is_a_programming_error_not_an_option_left_out():
    @click.command()
    @click.option("--keep", type=int, default=3)
    @click.pass_context
    def misspelt(ctx, keep):
        return given_options(ctx, ["kep"])

    with pytest.raises(ValueError, match="misspelt has no option kep"):
        misspelt.main(["--keep", "4"], standalone_mode=False)
