"""`nitro --help` must stay fast: it may not import torch, diffusers or transformers."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "numpy", "PIL")
CHECK = """
import sys
from typer.testing import CliRunner
from nitro_cli.cli import app
result = CliRunner().invoke(app, {args!r})
assert result.exit_code == 0, result.output
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY:", heavy)
"""


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["bench", "--help"],
                                  ["checklist", "--help"], ["doctor", "--help"],
                                  ["export", "--help"], ["export", "onnx", "--help"]])
def test_help_does_not_import_heavy_modules(args):
    done = subprocess.run([sys.executable, "-c", CHECK.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY: []" in done.stdout


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "nitro_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("nitro ")
