"""`nitro bench` on random:tiny: contract fields, failing presets, CSV, the history copy, freeing."""

import csv
import io
import json
import math
import os
import weakref
from pathlib import Path

import pytest
from PIL import Image

from nitro_cli import benchmark, hardware, options, paths
from nitro_cli.cli import app
from nitro_cli.errors import UsageError
from tests.conftest import FAST

CONTRACT_RESULT_FIELDS = ("preset", "runs", "median_s", "min_s", "max_s", "it_per_s", "load_s",
                          "first_call_s", "peak_vram_mib", "peak_rss_mib", "images_per_min",
                          "speedup_vs_baseline", "psnr_vs_baseline_db")


def write_preset(folder, name, **fields):
    path = folder / f"{name}.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in fields.items()), encoding="utf-8")
    return path


def test_json_csv_and_history_copy(runner, tmp_path):
    report_file, csv_file = tmp_path / "bench.json", tmp_path / "bench.csv"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner", "--runs", "2", *FAST,
                                 "--json", str(report_file), "--csv", str(csv_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())

    env = report["environment"]
    for key in ("device", "torch", "diffusers", "model", "date", "nitro"):
        assert env[key], key
    assert env["model"] == "random:tiny" and "speed and memory only" in env["note"]

    rows = {row["preset"]: row for row in report["results"]}
    assert list(rows) == ["baseline", "beginner"]
    for row in rows.values():
        assert all(field in row for field in CONTRACT_RESULT_FIELDS)
        assert row["error"] is None and row["runs"] == 2 and row["steps"] == 2
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["load_s"] > 0 and row["first_call_s"] > 0 and row["it_per_s"] > 0
        assert row["images_per_min"] == pytest.approx(60 / row["median_s"], rel=1e-3)
        assert row["peak_vram_mib"] is None and row["peak_rss_mib"] > 0  # CPU: no allocator peak
        assert any(a.startswith("scheduler ") for a in row["applied"])
    assert rows["baseline"]["speedup_vs_baseline"] == 1.0
    assert rows["baseline"]["psnr_vs_baseline_db"] == "inf"  # documented: identical pixels
    # Another scheduler moves the picture: a finite PSNR, and a real ratio of medians.
    assert 0 < rows["beginner"]["psnr_vs_baseline_db"] < 100
    assert rows["beginner"]["speedup_vs_baseline"] == pytest.approx(
        rows["baseline"]["median_s"] / rows["beginner"]["median_s"], rel=1e-2)
    assert any("float16" in s for s in rows["beginner"]["skipped"])  # fp16 degrades on a CPU, and says so

    with csv_file.open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["preset"] for r in csv_rows] == ["baseline", "beginner"]
    assert float(csv_rows[1]["median_s"]) == rows["beginner"]["median_s"]
    assert csv_rows[0]["peak_vram_mib"] == "" and csv_rows[0]["psnr_vs_baseline_db"] == "inf"
    assert csv_rows[0]["shipped"] == "true"  # as the JSON spells it, not Python's True
    assert csv_rows[0]["applied"] == "; ".join(rows["baseline"]["applied"])  # a cell of text, not a Python list

    copies = list(paths.bench_dir().glob("bench-*.json"))
    assert len(copies) == 1 and json.loads(copies[0].read_text()) == report


def test_progress_shows_the_build_and_each_call(runner):
    result = runner.invoke(app, ["bench", "--presets", "baseline", "--runs", "2", "--warmup", "1", *FAST])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("baseline: ")]
    assert len(lines) == 4 and lines[0].startswith("baseline: built in ") and "compiles" not in lines[0]
    assert [line.split(":")[1] for line in lines[1:]] == [" warm-up call 1/3", " timed call 2/3", " timed call 3/3"]


def test_baseline_option_compares_with_another_row(runner, tmp_path):
    variant = write_preset(tmp_path, "advanced-cached", scheduler="dpmpp_2m_karras", feature_cache_interval=2,
                           safety_checker="false", prompt_cache="true")
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", f"advanced,{variant}", "--baseline", "advanced", *FAST,
                                 "--steps", "3", "--runs", "1", "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    rows = {row["preset"]: row for row in report["results"]}
    assert report["environment"]["baseline"] == "advanced"
    assert rows["advanced"]["speedup_vs_baseline"] == 1.0 and rows["advanced"]["psnr_vs_baseline_db"] == "inf"
    assert 0 < rows["advanced-cached"]["psnr_vs_baseline_db"] < 100  # the cached steps move the picture
    assert "compare with advanced (--baseline)" in result.stderr.replace("\n", " ")


def test_checklist_does_not_take_a_users_file_named_like_a_tier_for_the_tier(runner, tmp_path):
    """Rows are named by file stem: a user's beginner.yaml variant (here: another scheduler) is not the shipped
    beginner tier, and a user's baseline.yaml is not the baseline `checklist` gives speed-ups against."""
    (tmp_path / "mine").mkdir()
    variant = write_preset(tmp_path / "mine", "beginner", scheduler="euler", steps=2)
    own_baseline = write_preset(tmp_path / "mine", "baseline", scheduler="euler", steps=2)
    shipped_report, users_report = tmp_path / "shipped.json", tmp_path / "users.json"
    for presets, report in ((f"baseline,{variant}", shipped_report), (f"{own_baseline},advanced", users_report)):
        result = runner.invoke(app, ["bench", "--presets", presets, *FAST, "--runs", "1", "--warmup", "0",
                                     "--json", str(report)])
        assert result.exit_code == 0, result.output
    rows = json.loads(shipped_report.read_text())["results"]
    assert [(r["preset"], r["shipped"]) for r in rows] == [("baseline", True), ("beginner", False)]

    def measured(report):
        result = runner.invoke(app, ["checklist", "--json", "--bench", str(report)])
        assert result.exit_code == 0, result.output
        return {tier["tier"]: tier["measured"] for tier in json.loads(result.stdout)}

    tiers = measured(shipped_report)
    assert tiers["baseline"]["median_s"] > 0 and tiers["beginner"] is None
    tiers = measured(users_report)
    assert tiers["baseline"] is None
    assert tiers["advanced"]["median_s"] > 0 and tiers["advanced"]["speedup_vs_baseline"] is None


def test_a_preset_of_another_size_says_why_it_has_no_psnr(runner, tmp_path):
    small = write_preset(tmp_path, "small", scheduler="euler", steps=2, width=64, height=64)
    wide = write_preset(tmp_path, "wide", scheduler="euler", steps=2, width=96, height=64)
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", f"{small},{wide}", "--baseline", "small", "--model",
                                 "random:tiny", "--device", "cpu", "--runs", "1", "--warmup", "0",
                                 "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    rows = {row["preset"]: row for row in json.loads(report_file.read_text())["results"]}
    assert rows["wide"]["psnr_vs_baseline_db"] is None and rows["wide"]["speedup_vs_baseline"] > 0
    assert "wide ran at another size than small: no PSNR" in " ".join(result.stderr.split())
    assert "compare with small (--baseline)" in " ".join(result.stderr.split())  # both notes, not one of them


@pytest.mark.parametrize("name", ["expert", "baseline"])
def test_baseline_option_must_name_a_row(runner, name):
    """Given, even as the default's own name, it must be among the rows; left out, baseline is used if it runs."""
    result = runner.invoke(app, ["bench", "--presets", "beginner,advanced", "--baseline", name, *FAST])
    assert result.exit_code == 2
    assert f"Error: --baseline {name} is not one of the rows: beginner, advanced" in result.stderr
    assert not paths.bench_dir().exists()


def test_failing_presets_become_error_rows_and_exit_1(runner, tmp_path, monkeypatch):
    import torch

    import nitro_cli.builder

    real_build = nitro_cli.builder.build_pipeline

    def out_of_memory_for_int8(settings, *args, **kwargs):  # what a too-small GPU does to one preset
        if settings.quantization == "int8":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_build(settings, *args, **kwargs)

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", out_of_memory_for_int8)
    quantized = write_preset(tmp_path, "int8-variant", quantization="int8", steps=2)
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", f"baseline,{quantized}", "--runs", "1", *FAST,
                                 "--json", str(report_file)])
    assert result.exit_code == 1
    assert "Error: 1 of 2 presets failed: int8-variant" in result.output
    rows = json.loads(report_file.read_text())["results"]
    assert [r["preset"] for r in rows] == ["baseline", "int8-variant"]
    assert rows[0]["error"] is None and rows[0]["median_s"] > 0
    assert "out of memory" in rows[1]["error"] and rows[1]["median_s"] is None
    assert list(paths.bench_dir().glob("bench-*.json"))  # a failed run is still saved for checklist


def test_presets_keep_their_own_steps_without_baseline(runner, tmp_path):
    two = write_preset(tmp_path, "two-steps", steps=2, scheduler="euler")
    three = write_preset(tmp_path, "three-steps", steps=3, scheduler="euler")
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", f"{two},{three}", "--model", "random:tiny",
                                 "--width", "64", "--height", "64", "--device", "cpu", "--runs", "1",
                                 "--warmup", "0", "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    rows = json.loads(report_file.read_text())["results"]
    assert [(r["preset"], r["steps"]) for r in rows] == [("two-steps", 2), ("three-steps", 3)]
    assert all(r["speedup_vs_baseline"] is None and r["psnr_vs_baseline_db"] is None for r in rows)
    # Without warm-up the first call is the timed one.
    assert all(r["first_call_s"] == r["median_s"] for r in rows)
    assert "each preset kept its own steps" in result.output


@pytest.mark.parametrize("presets, size, message", [
    ("baseline,beginer", "64", "unknown preset 'beginer'"),
    ("baseline,missing.yaml", "64", "preset file not found: missing.yaml"),
    ("baseline,beginner", "65", "'width' must be a multiple of 8, not 65"),
    (" , ", "64", "--presets is empty"),  # not an empty report saved as a run that measured nothing
], ids=["misspelled", "missing-file", "bad-width", "empty"])
def test_bad_presets_and_sizes_are_usage_errors_before_any_preset_runs(runner, presets, size, message):
    result = runner.invoke(app, ["bench", "--presets", presets, "--model", "random:tiny", "--steps", "2",
                                 "--width", size, "--height", "64", "--device", "cpu", "--runs", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not paths.bench_dir().exists()  # nothing ran, so no report was saved


def test_bad_model_is_a_usage_error_before_any_preset(runner):
    result = runner.invoke(app, ["bench", "--model", "/nowhere/model.safetensors", "--device", "cpu"])
    assert result.exit_code == 2
    assert "model file not found" in result.output
    assert not paths.bench_dir().exists()


@pytest.mark.parametrize("cached", [False, True], ids=["plain", "feature-cache"])
def test_each_pipeline_is_freed_before_the_next_preset_loads(monkeypatch, tmp_path, cached):
    """The feature cache ties UNet, forward and scheduler into a reference cycle: freed all the same."""
    import nitro_cli.builder

    real_build = nitro_cli.builder.build_pipeline
    previous: list[weakref.ref] = []
    alive_at_next_load: list[bool] = []

    def tracking_build(*args, **kwargs):
        alive_at_next_load.extend(ref() is not None for ref in previous)
        built = real_build(*args, **kwargs)
        previous[:] = [weakref.ref(built.pipe.unet)]
        return built

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", tracking_build)
    preset = "beginner"
    if cached:
        preset = str(tmp_path / "cached.yaml")
        (tmp_path / "cached.yaml").write_text("scheduler: euler\nfeature_cache_interval: 2\n", encoding="utf-8")
    options = benchmark.BenchOptions(presets=(preset, preset), model="random:tiny", runs=1, warmup=0,
                                     steps=3, width=64, height=64, device="cpu")
    report = benchmark.run_bench(options)
    assert not report.failed
    assert any("UNet feature cache" in a for a in report.results[0].applied) == cached
    assert alive_at_next_load == [False]


FIRST_LOAD_CHECK = """
import sys
import nitro_cli.builder
from nitro_cli import benchmark

real_build, imported = nitro_cli.builder.build_pipeline, []

def build(*args, **kwargs):  # called inside the timed load
    imported.extend(name in sys.modules for name in ("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
                                                    "transformers.models.clip.modeling_clip"))
    return real_build(*args, **kwargs)

nitro_cli.builder.build_pipeline = build
benchmark.run_bench(benchmark.BenchOptions(presets=("baseline",), model="random:tiny", runs=1, warmup=0, steps=2,
                                           width=64, height=64, device="cpu"))
print(imported)
"""


def test_the_first_load_is_timed_after_the_libraries_are_imported():
    """Importing diffusers and transformers costs seconds once per process: counted in the first preset's load_s,
    it made baseline (first by default) look many times slower to load than the tiers. A fresh process, as
    `nitro bench` is (this one has imported them in earlier tests)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FIRST_LOAD_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[True, True]"


def test_json_keeps_a_small_speedup_to_significant_digits():
    # A preset 12x slower than baseline (offload, a busy machine): 0.0840 must not become 0.08.
    row = benchmark.PresetResult(preset="slow", median_s=1.0, speedup_vs_baseline=0.08398706,
                                 psnr_vs_baseline_db=15.0612)
    written = benchmark.BenchReport(environment={}, results=[row]).to_dict()["results"][0]
    assert written["speedup_vs_baseline"] == pytest.approx(0.08398706, rel=1e-3)
    assert written["psnr_vs_baseline_db"] == 15.06 and written["median_s"] == 1.0


def test_json_keeps_fast_timings_to_significant_digits():
    """A preset at a few ms per image (a small model on a GPU): its seconds must keep the digits the
    derived fields were computed from, so images_per_min == 60 / median_s and the speed-up is the ratio."""
    fast = benchmark.PresetResult(preset="fast", median_s=0.00236, min_s=0.00149, max_s=0.00351,
                                  it_per_s=847.46, images_per_min=60 / 0.00236, speedup_vs_baseline=0.00351 / 0.00236)
    written = benchmark.BenchReport(environment={}, results=[fast]).to_dict()["results"][0]
    assert written["median_s"] == pytest.approx(0.00236, rel=1e-3)
    assert written["min_s"] == pytest.approx(0.00149, rel=1e-3) and written["max_s"] == pytest.approx(0.00351, rel=1e-3)
    assert written["images_per_min"] == pytest.approx(60 / written["median_s"], rel=1e-3)
    assert written["speedup_vs_baseline"] == pytest.approx(written["max_s"] / written["median_s"], rel=1e-3)
    slow = benchmark.PresetResult(preset="slow", median_s=45.0, images_per_min=60 / 45.0)  # fp32 on a CPU
    written = benchmark.BenchReport(environment={}, results=[slow]).to_dict()["results"][0]
    assert written["images_per_min"] == pytest.approx(60 / written["median_s"], rel=1e-3)


def test_psnr_db():
    black = Image.new("RGB", (8, 8), (0, 0, 0))
    assert math.isinf(benchmark.psnr_db(black, black.copy()))
    off_by_one = Image.new("RGB", (8, 8), (1, 1, 1))
    assert benchmark.psnr_db(off_by_one, black) == pytest.approx(20 * math.log10(255))


def _gpu_report() -> benchmark.BenchReport:
    """Two GPU rows, one with a variant file's long stem: the widest table bench prints."""
    environment = {"model": "random:sd15", "device": "NVIDIA H200", "device_type": "cuda", "runs": 3, "warmup": 1,
                   "prompt": benchmark.BENCH_PROMPT, "seed": benchmark.BENCH_SEED, "steps_override": None,
                   "baseline": "expert", "max_vram_gib": None, "note": None}
    rows = [benchmark.PresetResult(preset=name, steps=25, batch_size=1, width=512, height=512, median_s=0.1834,
                                   min_s=0.1821, max_s=0.1852, it_per_s=136.3, speedup_vs_baseline=1.0,
                                   peak_vram_mib=3521.0, peak_device_vram_mib=5012.0, peak_rss_mib=3378.0,
                                   load_s=12.34, first_call_s=104.56, psnr_vs_baseline_db=31.2)
            for name in ("expert", "expert-compile-text-encoder")]
    return benchmark.BenchReport(environment=environment, results=rows)


def test_a_gpu_table_in_a_log_keeps_every_number_whole():
    """Piped to a log (the GPU scripts' case), a row with a variant file's long stem and a GPU's VRAM column is
    wider than the 120 columns a pipe gets: no number may be cut to an ellipsis."""
    from rich.console import Console

    from nitro_cli.commands.bench import _print_report

    log = io.StringIO()
    console = Console(file=log, width=120)  # what `nitro bench` gives a pipe
    _print_report(console, _gpu_report())
    table_rows = [line for line in log.getvalue().splitlines() if line.startswith(" expert")]
    assert len(table_rows) == 2
    for line in table_rows:
        assert "…" not in line
        assert "0.182-0.185" in line and "3521 (5012)" in line and "104.56" in line and "31.2" in line


def test_a_gpu_table_in_an_80_column_terminal_keeps_every_number_whole():
    """Rich shrank the columns to fit and cut every number to an ellipsis (`0.1… 3… 1…`): each column keeps its
    longest number, the headers wrap between words, the long stem folds."""
    from rich.console import Console

    from nitro_cli.commands.bench import _print_report

    screen = io.StringIO()
    _print_report(Console(file=screen, width=80, force_terminal=True, color_system=None), _gpu_report())
    lines = screen.getvalue().splitlines()
    table_rows = [line for line in lines if "0.182-0.185" in line]
    assert len(table_rows) == 2 and "…" not in screen.getvalue()
    for line in table_rows:
        assert all(number in line.split() for number in ("25", "0.183", "136", "1.00x", "3521", "3378", "12.34",
                                                          "104.56", "31.2")), line
    assert max(len(line) for line in lines) <= 80


def test_a_table_too_wide_for_its_terminal_loses_no_character():
    """Where even the longest numbers side by side are wider than the terminal, cells fold: ugly, but nothing
    is cut."""
    from rich.console import Console

    from nitro_cli.commands.bench import _print_report

    screen = io.StringIO()
    _print_report(Console(file=screen, width=60, force_terminal=True, color_system=None), _gpu_report())
    assert "…" not in screen.getvalue()
    assert max(len(line) for line in screen.getvalue().splitlines()) <= 60


@pytest.mark.gpu
def test_gpu_rows_report_allocator_peaks_and_half_precision(runner, tmp_path):
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner", "--model", "random:tiny", "--steps", "2",
                                 "--width", "64", "--height", "64", "--device", "cuda", "--runs", "2",
                                 "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    assert report["environment"]["device_type"] == "cuda"
    baseline, beginner = report["results"]
    assert baseline["peak_vram_mib"] > 0 and beginner["peak_vram_mib"] > 0
    assert baseline["precision"] == "float32" and beginner["precision"] in ("float16", "bfloat16")
    if hardware.is_importable("pynvml"):  # the device-level figure includes the allocator's
        assert beginner["peak_device_vram_mib"] >= beginner["peak_vram_mib"]


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_bad_report_paths_are_usage_errors_before_any_preset_runs(runner, tmp_path, option):
    for path, message in ((tmp_path, "is a folder, not a file"), (tmp_path / "missing" / "r.json", "does not exist")):
        result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, option, str(path)])
        assert result.exit_code == 2, result.output
        assert f"Error: {option} {path}" in result.stderr and message in result.stderr
    assert "beginner" not in result.stderr.split("Error:")[0]  # nothing was loaded or measured
    assert list(paths.bench_dir().glob("bench-*.json")) == []


@pytest.mark.parametrize("option", ["--json", "--csv"])
@pytest.mark.parametrize("locked", ["folder", "file"])
def test_a_report_path_that_cannot_be_written_is_a_usage_error_before_any_preset_runs(runner, tmp_path, monkeypatch,
                                                                                       option, locked):
    """A read-only folder to make the file in, or a read-only file (another user's, a read-only mount), was found
    only once every preset had run."""
    target = tmp_path / "reports" / "bench.out"
    target.parent.mkdir()
    if locked == "file":
        target.touch()
    denied = target.parent if locked == "folder" else target
    real_access = os.access
    # Tests may run as root, whom no file mode stops: the filesystem's answer is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs:
                        False if Path(path) == denied and mode & os.W_OK else real_access(path, mode, *args, **kwargs))
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, option, str(target)])
    assert result.exit_code == 2, result.output
    assert f"Error: {option} {target}: not writable" in result.stderr
    assert not paths.bench_dir().exists()  # nothing was measured


def test_an_existing_file_in_a_folder_no_one_may_write_is_a_report_path(monkeypatch):
    """`--json /dev/stdout`: no user may create a file in /dev, but the file is there, to be written."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs:
                        False if Path(path) == Path("/dev") and mode & os.W_OK else real_access(path, mode, *args, **kwargs))
    options.check_report_file(Path("/dev/stdout"), "--json")
    with pytest.raises(UsageError, match="not writable"):
        options.check_report_file(Path("/dev/new-report.json"), "--json")


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_a_report_file_named_dash_is_stdout(runner, option):
    """`nitro bench --json - | jq ...`: the report alone on stdout (tables and progress are on stderr)."""
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--runs", "1", "--warmup", "0", option, "-"])
    assert result.exit_code == 0, result.output
    if option == "--json":
        [row] = json.loads(result.stdout)["results"]
    else:
        [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["preset"] == "beginner"
    assert not Path("-").exists()


def test_a_csv_on_stdout_keeps_its_line_ends_on_windows(monkeypatch):
    """`nitro bench --csv - > report.csv` on Windows: its text-mode stdout wrote each of the CSV's \r\n as \r\r\n,
    a blank row after every row in a spreadsheet."""
    from nitro_cli.commands import bench

    written = io.BytesIO()
    windows_stdout = io.TextIOWrapper(written, encoding="utf-8", newline="\r\n")  # Windows' newline translation
    monkeypatch.setattr("sys.stdout", windows_stdout)
    bench.bench(presets="beginner", model="random:tiny", runs=1, warmup=0, steps=2, width=64, height=64,
                device=options.Device.cpu, csv_file=Path("-"))
    windows_stdout.flush()
    assert b"\r\r\n" not in written.getvalue()
    [row] = list(csv.DictReader(io.StringIO(written.getvalue().decode("utf-8"), newline="")))
    assert row["preset"] == "beginner"


def test_json_and_csv_into_one_file_is_a_usage_error_before_any_preset_runs(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the same file under two spellings
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--json", "report.txt",
                                 "--csv", str(tmp_path / "report.txt")])
    assert result.exit_code == 2, result.output
    assert "Error: --json and --csv name one file" in result.stderr
    assert not paths.bench_dir().exists()


def _disk_full_at(monkeypatch, target):
    write_text = Path.write_text

    def disk_full_at_target(path, *args, **kwargs):
        if path == target:
            raise OSError(28, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_at_target)


def test_a_report_file_that_fails_to_write_keeps_the_history_copy_and_the_other_file(runner, tmp_path, monkeypatch):
    """A full disk at --json stopped before --csv, which was on another disk and never written."""
    target, csv_file = tmp_path / "bench.json", tmp_path / "bench.csv"
    _disk_full_at(monkeypatch, target)
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--runs", "1", "--warmup", "0",
                                 "--json", str(target), "--csv", str(csv_file)])
    assert result.exit_code == 1, result.output
    assert f"Error: could not write {tmp_path / 'bench.json'}: No space left on device" in result.stderr
    saved = list(paths.bench_dir().glob("bench-*.json"))
    assert len(saved) == 1 and f"Hint: the measurements are kept, as JSON, in {saved[0]}" in result.stderr
    assert len(csv_file.read_text().splitlines()) == 2


def test_a_report_file_that_fails_to_write_after_ctrl_c_is_told(runner, tmp_path, monkeypatch):
    """Stopped by a signal, bench's own exit (130, after "Interrupted: N of M presets finished") went through the
    branch for a library's error after a signal: the failed --json was not told, and "Interrupted." came twice."""
    import nitro_cli.builder
    from nitro_cli import interrupts

    real_build = nitro_cli.builder.build_pipeline

    def interrupted_at_advanced(settings, *args, **kwargs):
        if not settings.safety_checker:
            monkeypatch.setattr(interrupts, "stop_signalled", True)  # as the signal handler does
            raise KeyboardInterrupt
        return real_build(settings, *args, **kwargs)

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", interrupted_at_advanced)
    target = tmp_path / "bench.json"
    _disk_full_at(monkeypatch, target)
    result = runner.invoke(app, ["bench", "--presets", "baseline,advanced", *FAST, "--runs", "1", "--warmup", "0",
                                 "--json", str(target)])
    assert result.exit_code == 130, result.output
    told = result.stderr.splitlines()
    assert f"Error: could not write {target}: No space left on device" in told
    assert told[-1].startswith("Interrupted: 1 of 2 presets finished") and "Interrupted." not in told


def test_two_rows_with_one_name_are_a_usage_error_before_any_preset_runs(runner, tmp_path):
    """Rows are named by preset or file stem; two alike would make --baseline and checklist pick one by chance."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same_stem = [write_preset(tmp_path / folder, "fast", steps=2) for folder in ("a", "b")]
    for presets, name in (("baseline,beginner,baseline", "baseline"), (",".join(map(str, same_stem)), "fast")):
        result = runner.invoke(app, ["bench", "--presets", presets, *FAST, "--runs", "1"])
        assert result.exit_code == 2, result.output
        assert f"Error: --presets names the row {name} twice" in result.stderr
    assert not paths.bench_dir().exists()


def test_an_unusable_cache_folder_still_writes_the_report_files(runner, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("", encoding="utf-8")
    monkeypatch.setenv("NITRO_CACHE_DIR", str(not_a_folder))
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--runs", "1", "--warmup", "0",
                                 "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    assert json.loads(report_file.read_text())["results"][0]["median_s"] > 0
    assert f"Warning: could not save the report in {not_a_folder / 'bench'}" in result.stderr.replace("\n", "")


def test_ctrl_c_keeps_the_finished_rows_and_exits_130(runner, tmp_path, monkeypatch):
    import nitro_cli.builder

    real_build = nitro_cli.builder.build_pipeline

    def interrupted_at_advanced(settings, *args, **kwargs):  # the user presses Ctrl-C while advanced loads
        if not settings.safety_checker:
            raise KeyboardInterrupt
        return real_build(settings, *args, **kwargs)

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", interrupted_at_advanced)
    report_file, csv_file = tmp_path / "bench.json", tmp_path / "bench.csv"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner,advanced", *FAST, "--runs", "1",
                                 "--warmup", "0", "--json", str(report_file), "--csv", str(csv_file)])
    assert result.exit_code == 130, result.output
    assert "Interrupted: 2 of 3 presets finished" in result.stderr
    report = json.loads(report_file.read_text())
    assert report["environment"]["interrupted"] is True
    assert [(r["preset"], r["error"]) for r in report["results"]] == [("baseline", None), ("beginner", None)]
    assert report["results"][1]["speedup_vs_baseline"] > 0
    assert len(csv_file.read_text().splitlines()) == 3
    (saved,) = paths.bench_dir().glob("bench-*.json")
    assert json.loads(saved.read_text()) == report


def test_ctrl_c_before_any_preset_finished_saves_nothing(runner, tmp_path, monkeypatch):
    import nitro_cli.builder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", interrupted)
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner", *FAST, "--json", str(report_file)])
    assert result.exit_code == 130 and "Interrupted." in result.stderr
    assert not report_file.exists() and not paths.bench_dir().exists()


@pytest.fixture
def scripted_measure(monkeypatch):
    """`scripted_measure([(seconds, peak_rss_mib), ...])`: bench's measurements, in order (the load first, then each
    call), are these instead of this machine's: the arithmetic of a row, checked exactly."""
    import contextlib

    from nitro_cli import measure

    def use(script):
        readings = iter(script)

        @contextlib.contextmanager
        def scripted(device):
            taken = measure.Measurement()
            yield taken
            taken.seconds, taken.peak_rss_mib = next(readings)

        monkeypatch.setattr(measure, "measure", scripted)
    return use


def test_a_row_is_per_image_over_the_timed_calls_with_their_median(scripted_measure):
    """Batches of 2, one warm-up call (the slow first one) and three timed calls, one of them an outlier."""
    load, warm_up, timed = (5.0, 100.0), (9.0, 600.0), [(2.0, 500.0), (2.4, 200.0), (8.0, 150.0)]
    scripted_measure([load, warm_up, *timed])
    options = benchmark.BenchOptions(presets=("beginner",), model="random:tiny", runs=3, warmup=1, steps=2,
                                     batch_size=2, width=64, height=64, device="cpu")
    [row] = benchmark.run_bench(options).results
    assert row.error is None and (row.runs, row.batch_size) == (3, 2)
    assert (row.min_s, row.median_s, row.max_s) == (1.0, 1.2, 4.0)  # seconds per image, not per call; no mean
    assert row.it_per_s == pytest.approx(2 / 2.4)  # steps per second of a whole call (a step covers the batch)
    assert row.images_per_min == pytest.approx(60 / 1.2)
    assert (row.load_s, row.first_call_s) == (5.0, 9.0)
    assert row.peak_rss_mib == 600.0  # the highest of the calls, warm-up ones included


def test_a_failed_baseline_leaves_the_other_rows_without_comparison(runner, tmp_path, monkeypatch):
    """baseline (fp32) runs out of memory on a small GPU: the other rows keep their measurements, with no speed-up
    or PSNR against a baseline that has none, and the run ends as any run with a failed row (exit 1)."""
    import torch

    import nitro_cli.builder

    real_build = nitro_cli.builder.build_pipeline

    def out_of_memory_in_fp32(settings, *args, **kwargs):
        if settings.precision == "float32":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_build(settings, *args, **kwargs)

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", out_of_memory_in_fp32)
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner", "--runs", "1", "--warmup", "0", *FAST,
                                 "--json", str(report_file)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Error: 1 of 2 presets failed: baseline" in result.stderr
    baseline, beginner = json.loads(report_file.read_text())["results"]
    assert "out of memory" in baseline["error"]
    assert beginner["error"] is None and beginner["median_s"] > 0
    assert beginner["speedup_vs_baseline"] is None and beginner["psnr_vs_baseline_db"] is None



def test_a_row_that_loads_an_empty_compiled_library_names_the_file(runner, tmp_path, monkeypatch):
    """The row says which file in the compile cache to delete (see test_generate_run's test of generate)."""
    from torch._inductor.exc import InductorError

    import nitro_cli.builder

    library = paths.compile_cache_dir() / "3u" / "c3ue.main.so"

    def cut_short_library(*args, **kwargs):
        raise InductorError(ImportError(f"{library}: file too short"), None)

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", cut_short_library)
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "beginner", "--runs", "1", *FAST, "--json", str(report_file)])
    assert result.exit_code == 1, result.output
    [row] = json.loads(report_file.read_text())["results"]
    assert row["error"].startswith(f"a damaged file in the compile cache: {library} (a compile killed part way "
                                   "leaves one) (hint: delete it and any other empty library there")

def test_reports_saved_in_the_same_second_are_all_kept():
    """Three quick runs (a script's loop) in one second: each keeps its own history file."""
    report = benchmark.BenchReport(environment={"date": "2026-11-27T10:00:00+00:00"}, results=[])
    saved = [benchmark.save_to_history(report) for _ in range(3)]
    assert [path.name for path in saved] == ["bench-20261127-100000.json", "bench-20261127-100000-2.json",
                                             "bench-20261127-100000-3.json"]
    assert all(path.is_file() for path in saved)


def test_the_table_says_which_rows_a_busy_machine_moved_and_when_nothing_compares_with_baseline():
    """A row whose slowest timed call is over NOISY_SPREAD times its fastest is named (its median may be the
    machine's, not the preset's); without a baseline row the empty 'vs base' and PSNR columns are explained."""
    from nitro_cli.commands.bench import NOISY_SPREAD, _table_notes

    environment = {"runs": 3, "warmup": 1, "prompt": benchmark.BENCH_PROMPT, "seed": benchmark.BENCH_SEED,
                   "device_type": "cpu", "steps_override": 2, "baseline": benchmark.BASELINE, "note": None}
    steady = benchmark.PresetResult("beginner", steps=2, min_s=1.0, median_s=1.1, max_s=NOISY_SPREAD)
    noisy = benchmark.PresetResult("advanced", steps=2, min_s=1.0, median_s=1.2, max_s=NOISY_SPREAD + 0.1)
    failed = benchmark.PresetResult("expert", steps=2, error="out of memory")
    notes = _table_notes(benchmark.BenchReport(environment, [steady, noisy, failed]))
    [busy] = [note for note in notes if f"over {NOISY_SPREAD}x" in note]
    assert "advanced" in busy and "beginner" not in busy and "expert" not in busy
    assert any("baseline not run" in note and "no speed-up or PSNR" in note for note in notes)


def test_the_table_writes_out_very_fast_rows(runner, scripted_measure):
    """A GPU dry run on random:tiny: 0.0004 s/image read 0.000, and 5000 it/s read 5e+03."""
    scripted_measure([(1.0, 100.0), (0.0004, 100.0), (0.0004, 100.0)])
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--runs", "1", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    [row] = [line.split() for line in result.stderr.splitlines() if line.split()[:2] == ["beginner", "2"]]
    assert row[2:5] == ["0.000400", "0.000400-0.000400", "5000"]


def test_json_and_csv_both_on_stdout_is_a_usage_error_that_says_so(runner):
    """It said "--json and --csv name one file, -": `-` is not a file to a user who typed it."""
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--json", "-", "--csv", "-"])
    assert result.exit_code == 2, result.output
    assert "Error: --json - and --csv - would both print on stdout" in result.stderr
    assert not paths.bench_dir().exists()


def test_a_history_report_cut_short_by_a_full_disk_is_not_left_behind(runner, monkeypatch):
    """The cache copy was written in place: a full disk left it empty, the newest report, and checklist then read
    "not readable JSON" and showed nothing measured, even after space was freed."""
    write_text = Path.write_text

    def disk_fills_up(path, *args, **kwargs):
        if path.parent == paths.bench_dir():
            write_text(path, "")
            raise OSError(28, "No space left on device")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_fills_up)
    result = runner.invoke(app, ["bench", "--presets", "beginner", *FAST, "--runs", "1", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "Warning: could not save the report" in result.stderr
    assert list(paths.bench_dir().iterdir()) == []
