"""The `nitro` process as scripts see it: a fast `--help` (no torch, diffusers or transformers imported), `python -m`,
and stdout/stderr free of library noise and encoding crashes."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("inherited, kept", [("SIG_DFL", False), ("SIG_IGN", True)])
def test_sigterm_stops_a_run_as_ctrl_c_does_unless_the_process_was_started_ignoring_it(inherited, kept):
    script = (f"import signal, sys\nsignal.signal(signal.SIGTERM, signal.{inherited})\n"
              "from nitro_cli.__main__ import main\nsys.argv = ['nitro', '--version']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "try:\n    signal.raise_signal(signal.SIGTERM)\nexcept KeyboardInterrupt:\n"
              "    print('STOPPED AS BY CTRL-C', file=sys.stderr)\n"
              "print('IGNORED' if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN else 'HANDLED', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    told = done.stderr.strip().splitlines()
    assert told[-1] == ("IGNORED" if kept else "HANDLED")
    assert ("STOPPED AS BY CTRL-C" in told) is not kept  # the KeyboardInterrupt that `guarded` makes exit 130


def test_ctrl_c_is_remembered_as_a_stop_for_the_whole_run():
    script = ("import signal\nfrom nitro_cli.__main__ import main\nimport sys\nsys.argv = ['nitro', '--version']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\nprint(signal.getsignal(signal.SIGINT).__name__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "_stop"


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_command_line_itself_imports_is_an_interrupt(stop):
    """Ctrl-C in a run's first half second, while typer and rich import: Python's KeyboardInterrupt traceback,
    before nitro's handler was installed."""
    script = ("import runpy, signal, sys\n"
              "class StopWhileImporting:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'typer':\n"
              f"            signal.raise_signal(signal.{stop})\n"
              "sys.meta_path.insert(0, StopWhileImporting())\n"
              "sys.argv = ['nitro', '--version']\n"
              "runpy.run_module('nitro_cli', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "Interrupted.\n", "")


def test_a_stop_while_typer_reads_the_commands_is_an_interrupt():
    """Ctrl-C while typer builds the command line from the commands' signatures (before any of them runs): Python's
    KeyboardInterrupt traceback. typer.main.get_command is typer's documented way to that command line."""
    script = ("import runpy, signal, sys\n"
              "import typer.main\n"
              "def stopped(app):\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "typer.main.get_command = stopped\n"
              "sys.argv = ['nitro', '--version']\n"
              "runpy.run_module('nitro_cli', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "Interrupted.\n", "")


def test_a_stop_while_typer_parses_the_options_is_told(monkeypatch):
    """typer turns a KeyboardInterrupt while it parses (and imports what it needs, e.g. pydantic) into exit 130
    with nothing said."""
    from typer.core import TyperGroup
    from typer.testing import CliRunner

    from nitro_cli.cli import app

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TyperGroup, "make_context", stopped)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert (result.exit_code, result.stderr) == (130, "Interrupted.\n")


def test_an_interrupt_a_library_turns_into_its_own_error_is_still_an_interrupt(monkeypatch, capsys):
    """Ctrl-C or SIGTERM while torch imported came out as torch's ImportError ("cannot load module more than once
    per process"): exit 1, with a hint to reinstall torch. The same error without a signal stays a failure."""
    import signal

    import typer

    from nitro_cli import cli, interrupts

    def importing_torch():
        try:
            interrupts._stop(signal.SIGTERM, None)
        except KeyboardInterrupt:
            raise ImportError("cannot load module more than once per process") from None

    monkeypatch.setattr(interrupts, "stop_signalled", False)
    with pytest.raises(typer.Exit) as exit_info:
        cli.guarded(importing_torch)()
    assert exit_info.value.exit_code == 130 and "Interrupted." in capsys.readouterr().err

    def broken_install():
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(interrupts, "stop_signalled", False)
    with pytest.raises(ImportError):
        cli.guarded(broken_install)()


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "nitro_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("nitro ")


@pytest.mark.parametrize("preset", ["beginner", pytest.param("expert", marks=pytest.mark.slow)])
def test_a_run_prints_no_log_lines_or_warnings_of_the_libraries(tmp_path, preset):
    """diffusers imports torchao whenever it is installed (the test extra installs it), and torchao logs each
    optional kernel library this torch can't load; torch logs a deprecation in glog style (`W1126 ...`).
    Compiling (expert) a bf16 UNet, as on a CPU with AMX, made dynamo warn about diffusers' code."""
    pytest.importorskip("torchao", reason="the noise comes with torchao (pip install 'nitro-cli[fp8]')")
    from tests.conftest import FAST

    done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "a castle", *FAST, "--preset", preset,
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert library_noise(done.stderr) == []


def library_noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Failed to load" in line or re.match(r"[IWE]\d{4} ", line) or "UserWarning" in line
            or line.startswith("[transformers]")]


def test_an_onnx_export_prints_no_log_lines_of_the_libraries(tmp_path):
    """The export imported diffusers before quieting the loggers that speak at import time."""
    pytest.importorskip("torchao", reason="the noise comes with torchao (pip install 'nitro-cli[fp8]')")
    pytest.importorskip("onnx")
    done = subprocess.run([sys.executable, "-m", "nitro_cli", "export", "onnx", "--model", "random:tiny",
                           "--out", str(tmp_path / "onnx")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert library_noise(done.stderr) == []


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "paths"])
def test_a_stdout_that_cannot_encode_the_prompt_still_gets_every_image(tmp_path, json_lines):
    """A Windows pipe or PYTHONIOENCODING=ascii: JSON lines are ASCII, plain paths are backslash-escaped."""
    import json

    from tests.conftest import FAST

    done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "café ☕", *FAST, "-n", "2",
                           "--out", str(tmp_path), *(["--json"] if json_lines else [])],
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = done.stdout.decode("ascii").splitlines()
    saved = sorted(path.name for path in tmp_path.glob("*.png"))
    assert len(saved) == 2 and all("café" in name for name in saved)
    if json_lines:
        assert sorted(Path(json.loads(line)["path"]).name for line in lines) == saved
        assert json.loads(lines[0])["prompt"] == "café ☕"
    else:
        assert sorted(Path(line).name for line in lines) == [name.replace("é", "\\xe9") for name in saved]


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path):
    """`nitro generate ... --json | head -1`: the images are the work; stdout's loss is only noted."""
    from tests.conftest import FAST

    process = subprocess.Popen([sys.executable, "-m", "nitro_cli", "generate", "a castle", *FAST, "-n", "4",
                                "--out", str(tmp_path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = process.stdout.readline()
    process.stdout.close()  # before the next image's line: each image takes a denoising call
    _, stderr = process.communicate(timeout=120)
    assert first.startswith(b'{"path": ') and process.returncode == 0, stderr.decode()
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert b"stdout's reader went away" in stderr


def test_a_closed_stdout_still_gets_every_image(tmp_path):
    """`nitro generate ... >&-` (a service started without stdout): Python sets sys.stdout to None, and the first
    image's path line raised AttributeError: a traceback, exit 1, the rest of the run lost."""
    from tests.conftest import FAST

    done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "a castle", *FAST, "-n", "2",
                           "--out", str(tmp_path), "--json"],
                          stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(1),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("*.png"))) == 2 and "Traceback" not in done.stderr


def test_prompts_from_a_closed_stdin_are_a_usage_error(tmp_path):
    """`nitro generate -f - <&-` (cron, a service): Python sets sys.stdin to None, and reading it was a traceback."""
    from tests.conftest import FAST

    done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "-f", "-", *FAST, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.close(0),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "Error: prompts file (standard input) has no prompts" in done.stderr


def test_a_run_goes_on_when_the_reader_of_stderr_goes_away(tmp_path):
    """`nitro generate ... 2>&1 | head -5`: once head had its lines, the next note or warning raised
    BrokenPipeError, and the run died (exit 1) with its images unmade. Notes are not the work: it goes on."""
    from tests.conftest import FAST

    run = subprocess.Popen([sys.executable, "-m", "nitro_cli", "generate", "a castle", *FAST, "-n", "2",
                            "--batch-size", "1", "--out", str(tmp_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in run.stderr:  # printed before the first image; the summary table comes after the last
        if line.startswith("Note: random:tiny has random weights"):
            break
    run.stderr.close()  # the reader goes away
    assert run.wait(timeout=120) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2


class _PipeWithoutReader:
    """A stream whose reader went away, as Windows reports it: OSError EINVAL, not BrokenPipeError."""

    def write(self, text):
        raise OSError(errno.EINVAL, "Invalid argument")

    def flush(self):
        raise OSError(errno.EINVAL, "Invalid argument")

    def isatty(self):
        return False


def test_on_windows_stderr_without_a_reader_goes_on(monkeypatch):
    """`nitro generate ... 2>&1 | head -5` in Git Bash on Windows: the broken pipe is EINVAL there (cpython
    issue 79935), which was raised out of the next note or warning and stopped the run."""
    from nitro_cli import streams

    monkeypatch.setattr(sys, "platform", "win32")
    silenced = []
    monkeypatch.setattr(streams, "to_devnull", silenced.append)
    stderr = streams._StderrWithoutReader(_PipeWithoutReader())
    assert stderr.write("Note: ...\n") == len("Note: ...\n")
    stderr.flush()
    assert len(silenced) == 2


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc/self/fd")
def test_a_stream_sent_to_devnull_leaves_no_descriptor_open():
    """to_devnull kept the descriptor it opened on devnull open for the rest of the process."""
    from nitro_cli import streams

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away
    with open(write_end, "w") as stream:
        before = len(os.listdir("/proc/self/fd"))
        streams.to_devnull(stream)
        assert len(os.listdir("/proc/self/fd")) == before
        stream.write("after\n")
        stream.flush()  # goes to devnull, not to the broken pipe


def test_on_windows_stdout_without_a_reader_lets_the_run_go_on(monkeypatch):
    """`nitro generate ... | head -1` on Windows: EINVAL was taken for a full disk, and the run stopped (exit 1)."""
    from nitro_cli import progress

    display = progress.RunDisplay(1, json_output=False, model="random:tiny", preset="beginner", bars=False)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "stdout", _PipeWithoutReader())
    monkeypatch.setattr(progress, "to_devnull", lambda stream: None)
    display._print_stdout("outputs/00000-1-castle.png")  # no RuntimeFailure
    assert display._stdout_gone


def test_a_missing_stderr_takes_any_letters_in_a_non_utf8_locale():
    """pythonw.exe (and GUI front ends) on Windows start nitro without standard streams; devnull was opened in the
    locale's encoding (cp1252 there, ASCII here) and a prompt's other letters in the summary raised
    UnicodeEncodeError (exit 1, after the images were made)."""
    script = ("import sys\nsys.stderr = None\nfrom nitro_cli import streams\nstreams.prepare()\n"
              "sys.stderr.write('00000-1-\\u57ce.png\\n')\nsys.stderr.flush()\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"})
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_a_report_written_as_is_follows_earlier_lines_and_the_streams_error_handling():
    """`--json -`/`--csv -` bytes go after whatever stdout already holds, and are escaped as stdout escapes text it
    can't encode (PYTHONIOENCODING=ascii, a Windows pipe): a model folder with other letters is printed, not a
    UnicodeEncodeError after the bench has run."""
    import io

    from nitro_cli.streams import write_as_is

    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii", errors="backslashreplace")
    stdout.write("earlier line\n")
    write_as_is(stdout, "model\r\nmod\u00e8les/\u00e9t\u00e9\r\n")
    assert raw.getvalue() == b"earlier line\nmodel\r\nmod\\xe8les/\\xe9t\\xe9\r\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="writes to /dev/full, a device that is always full")
@pytest.mark.parametrize("command", [["doctor", "--json"], ["checklist", "--markdown"]])
def test_a_report_to_a_full_disk_is_an_error_not_a_traceback(command):
    """`nitro doctor --json > report.json` on a full disk (a reason to run doctor): an OSError traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "nitro_cli", *command], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "Error: could not write the output: No space left on device" in done.stderr
    assert "Hint: free disk space" in done.stderr


def test_a_full_disk_while_safetensors_saves_is_told_as_one():
    """safetensors' Rust error carries no errno: saving a model into a full cache was a SafetensorError traceback."""
    from nitro_cli import cli

    SafetensorError = type("SafetensorError", (Exception,), {})
    failure = cli._expected_failure(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                                    'message: "No space left on device" })'))
    assert failure is not None and failure.exit_code == 1 and "No space left on device" in failure.message
    assert cli._expected_failure(SafetensorError("header too large")) is None
