"""`nitro <cmd> --help` as users read it: every default it promises is shown."""

import re

import pytest

from nitro_cli.cli import app


@pytest.mark.parametrize("args, default", [
    (["generate", "--help"], "beginner"),
    (["generate", "--help"], "nitrosocke/Nitro-Diffusion"),
    (["bench", "--help"], "nitrosocke/Nitro-Diffusion"),
    (["export", "onnx", "--help"], "nitrosocke/Nitro-Diffusion"),
    (["checklist", "--help"], "newest in the bench cache folder"),
])
def test_help_shows_the_defaults_that_are_not_typed_ones(runner, args, default):
    """Options whose default is None (decided later) name their real default; square brackets in a help text are
    rich markup, which swallowed a "[default: ...]" written there."""
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # A described default (show_default="...") reads "[default: (...)]", as in click.
    assert re.search(rf"\[default: \(?{re.escape(default)}\)?\]", result.output), result.output


def test_generate_help_in_an_80_column_terminal_cuts_nothing(runner):
    """--style's choices, drawn as `<list[archer|arcane|disney]>`, took so wide a column that the --model default
    was cut to `(nitrosocke/Nitro-Diffusi…`."""
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "(nitrosocke/Nitro-Diffusion)" in result.output and "…" not in result.output
    assert "archer|arcane|disney" in result.output


def test_generate_help_names_every_prompts_file_line_option(runner):
    """--help is where users look up a prompts line's options; it had missed those A1111 files use for image counts
    and the sampler."""
    from nitro_cli.prompts import LINE_OPTIONS

    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    help_text = " ".join(result.output.replace("│", " ").split())
    assert [option for option in LINE_OPTIONS if f"--{option}" not in help_text] == []


@pytest.mark.parametrize("args, message", [
    (["generate", "castle", "--seed", "-2"], "Error: Invalid value for '--seed'"),
    (["generate", "castle", "--style", "pixar"], "Error: Invalid value for '--style'"),
    (["generate", "castle", "--bogus"], "Error: No such option: --bogus"),
    (["bench", "--runs", "0"], "Error: Invalid value for '--runs'"),
    (["export", "onnx"], "Error: Missing option '--out'"),
    (["no-such-command"], "Error: No such command 'no-such-command'"),
])
def test_option_errors_are_error_and_hint_lines(runner, args, message):
    """The contract's error format holds for the errors click finds too (typer boxes them in a panel, which
    a script reading stderr for `Error:` misses): exit 2, `Error:` then `Hint:`, nothing drawn."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith(message), result.stderr
    assert lines[1].startswith("Hint: see `") and lines[1].endswith(" --help`")
    assert len(lines) == 2 and "─" not in result.stderr


@pytest.mark.parametrize("args", [[], ["export"]])
def test_a_command_group_without_a_command_shows_its_help_not_an_error(runner, args):
    """`nitro` (or `nitro export`) alone: click signals "show the help" with a usage error of its own, which must
    not become an empty `Error:` line in place of the help."""
    result = runner.invoke(app, args)
    assert "Usage:" in result.output and "Error:" not in result.output, result.output
