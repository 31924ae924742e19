"""The minimal generate path: one PNG with A1111 metadata, printed path."""

import json

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


def test_json_output_is_only_json_on_stdout(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", "--seed", "1", "-n", "2", "--json", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["seed"] for r in records] == [1, 2]
    assert all(r["seconds"] > 0 for r in records)


def test_batched_and_one_by_one_give_the_same_pixels(runner, tmp_path):
    import numpy as np

    one, two = tmp_path / "one", tmp_path / "two"
    runner.invoke(app, ["generate", "castle", "--seed", "5", "-n", "2", "--batch-size", "1", "--out", str(one), *FAST])
    runner.invoke(app, ["generate", "castle", "--seed", "5", "-n", "2", "--batch-size", "2", "--out", str(two), *FAST])
    names = sorted(p.name for p in one.glob("*.png"))
    assert names == sorted(p.name for p in two.glob("*.png")) and len(names) == 2
    for name in names:
        assert np.array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(two / name)))
