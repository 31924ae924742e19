"""`nitro --help` must stay fast: it may not import torch, diffusers or transformers."""

import os
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


def test_a_run_prints_no_import_time_log_lines_of_the_libraries(tmp_path):
    """diffusers imports torchao whenever it is installed (the test extra installs it), and torchao logs each
    optional kernel library this torch can't load; torch logs a deprecation in glog style (`W1126 ...`)."""
    import re

    pytest.importorskip("torchao", reason="the noise comes with torchao (pip install 'nitro-cli[fp8]')")
    from tests.conftest import FAST

    done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "a castle", *FAST, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if "Failed to load" in line or re.match(r"[IWE]\d{4} ", line)]
    assert noise == []
