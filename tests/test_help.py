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
