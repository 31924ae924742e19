"""The minimal generate path: one PNG with A1111 metadata, printed path."""

import pytest
from PIL import Image

from nitro_cli.cli import app
from tests.conftest import FAST


def test_generate_writes_png_with_parameters(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", "--style", "arcane", "--seed", "7", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-7-castle-arcane-style.png"]
    text = Image.open(files[0]).text["parameters"]
    first, params = text.split("\n")
    assert first == "castle, arcane style"
    assert "Steps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 64x64" in params
    assert 'Model: "random:tiny", Preset: beginner' in params
    assert str(files[0]) in result.stdout


def test_several_styles_on_the_command_line_mix_in_the_prompt(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", "--style", "arcane", "--style", "disney", "--seed", "7",
                                 "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    [image] = tmp_path.glob("*.png")
    prompt = Image.open(image).text["parameters"].split("\n")[0]
    assert "arcane style" in prompt and "modern disney style" in prompt, prompt


@pytest.mark.parametrize("command", [["generate", "castle", *FAST], ["export", "onnx", "--model", "random:tiny"]])
def test_an_empty_out_is_a_usage_error_not_the_current_folder(runner, tmp_path, monkeypatch, command):
    """`--out "$DIR"` with the variable unset: typer's Path type reads "" as ".", so images (or an export)
    went into whatever folder the script ran in."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, "--out", ""])
    assert result.exit_code == 2, result.output
    assert "Error: --out is empty" in result.stderr and "Hint:" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, told", [(["caf\udce9 castle"], "the prompt"),
                                         (["castle", "--negative", "caf\udce9"], "--negative")],
                         ids=["prompt", "negative"])
def test_text_that_is_not_utf8_is_a_usage_error(runner, tmp_path, given, told):
    """A Latin-1 terminal or a cp1252 script passes é as the byte 0xe9, which Python keeps as a lone surrogate:
    the prompt's fingerprint raised UnicodeEncodeError, a traceback (exit 1). A prompts file already said so."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", *given, *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"Error: {told} is not UTF-8 text (byte 0xe9 at character 4)" in result.stderr
    assert "Hint:" in result.stderr and not out.exists()
