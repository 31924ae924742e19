"""`nitro checklist`: items derived from the preset files, this machine's verdicts, bench numbers."""

import dataclasses
import json
import os

import pytest

from nitro_cli import paths
from nitro_cli.cli import app
from nitro_cli.presets import flatten, load_preset, shipped_names
from nitro_cli.tier_checklist import DESCRIPTIVE, build_checklist, moved_item_notes, tier_names

from fake_machines import GTX_1060, MACHINES, RTX_3060, gpu, machine


def items_of(tiers, name):
    return {item["setting"]: item for item in next(t for t in tiers if t["tier"] == name)["items"]}


def test_items_are_exactly_the_settings_that_differ_from_baseline(runner, fake_probe):
    fake_probe(MACHINES["A100 80 GB"])
    result = runner.invoke(app, ["checklist", "--json"])
    assert result.exit_code == 0, result.output
    tiers = json.loads(result.stdout)
    assert [t["tier"] for t in tiers] == tier_names()
    assert set(tier_names()) == set(shipped_names())
    baseline = flatten(load_preset("baseline").settings)
    for tier in tiers:
        settings = flatten(load_preset(tier["tier"]).settings)
        differing = {key for key, value in settings.items() if key not in DESCRIPTIVE and baseline[key] != value}
        assert {item["setting"].split(":")[0] for item in tier["items"]} == differing
        assert tier["claimed"] == load_preset(tier["tier"]).settings.claimed
        assert tier["measured"] is None
        for item in tier["items"]:
            assert set(item) >= {"name", "setting", "available", "reason"}
    assert items_of(tiers, "expert")["compile: reduce-overhead"]["available"] is True


def test_cpu_machine_says_why_not(runner, fake_probe):
    fake_probe(MACHINES["no GPU"])
    tiers = json.loads(runner.invoke(app, ["checklist", "--json"]).stdout)
    fp16 = items_of(tiers, "beginner")["precision: float16"]
    assert fp16["available"] is False and "CPU" in fp16["reason"]
    assert "no CUDA device" in items_of(tiers, "expert")["compile: reduce-overhead"]["reason"]
    cudnn = items_of(tiers, "expert")["cudnn_benchmark: true"]
    assert cudnn["available"] is False and "no CUDA device" in cudnn["reason"]


def test_gtx_1060_has_no_fast_fp16(runner, fake_probe):
    fake_probe(MACHINES["GTX 1060 6 GB"])
    tiers = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", "beginner"]).stdout)
    assert [t["tier"] for t in tiers] == ["beginner"]
    fp16 = items_of(tiers, "beginner")["precision: float16"]
    assert fp16["available"] is False and "compute capability 6.1): no fast fp16" in fp16["reason"]


@pytest.mark.parametrize("fake, reason", [
    (machine(RTX_3060), "xformers not installed"),
    (machine(), "no CUDA device"),
    (MACHINES["broken xformers"], "xformers is broken: ImportError"),
])
def test_xformers_item_on_a_users_preset(runner, fake_probe, tmp_path, fake, reason):
    mine = tmp_path / "mine.yaml"
    mine.write_text("tier: mine\nattention: xformers\nquantization: int8\n", encoding="utf-8")
    fake_probe(fake)
    result = runner.invoke(app, ["checklist", "--json", "--tier", str(mine)])
    items = items_of(json.loads(result.stdout), "mine")
    assert items["attention: xformers"]["available"] is False
    assert reason in items["attention: xformers"]["reason"]
    assert items["quantization: int8"]["available"] is False
    assert "+40% attention speed" in items["attention: xformers"]["claimed"]


def test_xformers_item_available_where_it_works():
    working = machine(GTX_1060, packages={"xformers": "0.0.28"})
    mine = load_preset("baseline", ["attention=xformers"])
    from nitro_cli.tier_checklist import tier_items

    (item,) = tier_items(mine.settings, load_preset("baseline").settings, "cuda", working)
    assert item.available and item.reason == ""


def write_bench(folder, name, median_s, age_s=0, **environment):
    folder.mkdir(parents=True, exist_ok=True)
    report = {"environment": {"device": "NVIDIA H200", "model": "random:sd15", **environment},
              "results": [{"preset": "baseline", "median_s": 2.1, "speedup_vs_baseline": 1.0, "peak_vram_mib": 6492},
                          {"preset": "advanced", "median_s": median_s, "speedup_vs_baseline": 2.1 / median_s,
                           "peak_vram_mib": 2724.0, "images_per_min": 60 / median_s,
                           "psnr_vs_baseline_db": 31.5}]}
    path = folder / name
    path.write_text(json.dumps(report), encoding="utf-8")
    stamp = 1_700_000_000 - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_reads_the_newest_bench_report_from_the_cache(runner, fake_probe):
    fake_probe(MACHINES["no GPU"])
    write_bench(paths.bench_dir(), "bench-20261125-100000.json", 1.0, age_s=3600)
    newest = write_bench(paths.bench_dir(), "bench-20261126-100000.json", 0.7)
    result = runner.invoke(app, ["checklist", "--json", "--tier", "advanced"])
    (tier,) = json.loads(result.stdout)
    assert tier["measured"]["median_s"] == 0.7
    assert tier["measured"]["speedup_vs_baseline"] == pytest.approx(3.0)
    assert tier["measured"]["file"] == str(newest)
    human = runner.invoke(app, ["checklist", "--tier", "beginner"])
    assert f"Measured: from {newest}" in human.stdout.replace("\n", "")
    assert "not measured" in human.stdout  # beginner is not in the report


def test_bench_option_and_where_it_looked(runner, fake_probe, tmp_path):
    fake_probe(MACHINES["no GPU"])
    chosen = write_bench(tmp_path, "mine.json", 1.4)
    (tier,) = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", "advanced", "--bench", str(chosen)]).stdout)
    assert tier["measured"]["median_s"] == 1.4
    markdown = runner.invoke(app, ["checklist", "--markdown", "--tier", "beginner"])
    assert f"no bench report in {paths.bench_dir()}" in markdown.stdout
    missing = runner.invoke(app, ["checklist", "--bench", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "bench report not found" in missing.stderr
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    assert runner.invoke(app, ["checklist", "--bench", str(tmp_path / "bad.json")]).exit_code == 2


def test_markdown_has_one_table_per_tier(runner, fake_probe):
    fake_probe(MACHINES["RTX 3060 12 GB"])
    result = runner.invoke(app, ["checklist", "--markdown"])
    assert result.exit_code == 0
    out = result.stdout
    assert out.count("| item | setting | on this machine | article claims |") == len(tier_names()) - 1  # not baseline
    assert "### baseline" in out and "| precision | `precision: float16` | yes | 14.2 → 8.7 GB VRAM (§2.1) |" in out
    assert "recommended preset: advanced" in out


def test_unknown_tier_is_a_usage_error(runner, fake_probe):
    fake_probe(MACHINES["no GPU"])
    result = runner.invoke(app, ["checklist", "--tier", "expret"])
    assert result.exit_code == 2 and "did you mean 'expert'" in result.stderr


def test_build_checklist_marks_every_item_available_on_a_capable_gpu():
    tiers = build_checklist(MACHINES["A100 80 GB"], ["advanced", "expert", "deploy"])
    assert all(item.available for tier in tiers for item in tier.items)


def test_article_8bit_and_sharding_show_their_real_effect_and_where_they_are():
    (expert,) = build_checklist(MACHINES["A100 80 GB"], ["expert"])
    settings = {item.setting.split(":")[0] for item in expert.items}
    assert not settings & {"quantization", "offload"}  # items stay derived from the preset file
    assert len(expert.notes) == 2
    quantization, offload = expert.notes
    assert "74.3 vs 27.6 ms" in quantization and "memory down, time up" in quantization
    assert "1.9x" in offload and "2039 MiB at 1.87x" in offload
    setting_offload = [n for n in shipped_names() if load_preset(n).settings.offload != "none"]
    assert setting_offload and f"is in {', '.join(setting_offload)}" in offload
    (lowvram,) = build_checklist(MACHINES["A100 80 GB"], ["lowvram"])
    assert "memory down, time up" in {i.setting: i for i in lowvram.items}["offload: model"].claimed
    assert lowvram.notes == ()


def test_a_moved_item_the_preset_sets_after_all_gets_no_note():
    expert, baseline = load_preset("expert").settings, load_preset("baseline").settings
    (note,) = moved_item_notes("expert", dataclasses.replace(expert, offload="model"), baseline)
    assert note.startswith("not in expert: `quantization`")


def test_markdown_lists_the_moved_items_under_expert(runner, fake_probe):
    fake_probe(MACHINES["no GPU"])
    out = runner.invoke(app, ["checklist", "--markdown", "--tier", "expert"]).stdout
    assert "- not in expert: `quantization`" in out and "- not in expert: `offload`" in out


def test_a_report_compared_with_another_row_gives_no_speed_up_against_baseline(runner, fake_probe, tmp_path):
    fake_probe(MACHINES["no GPU"])
    chosen = write_bench(tmp_path, "mine.json", 1.4, baseline="advanced")  # `nitro bench --baseline advanced`
    (tier,) = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", "advanced", "--bench", str(chosen)]).stdout)
    assert tier["measured"]["median_s"] == 1.4 and tier["measured"]["speedup_vs_baseline"] is None
    assert tier["measured"]["psnr_vs_baseline_db"] is None  # a PSNR against advanced, not against baseline


@pytest.mark.parametrize("content", ["{broken", '{"results": 3}', "[]"], ids=["not-json", "no-results", "a-list"])
def test_an_unreadable_report_in_the_cache_is_a_warning_not_an_error(runner, fake_probe, content):
    fake_probe(MACHINES["no GPU"])
    paths.bench_dir().mkdir(parents=True)
    broken = paths.bench_dir() / "bench-20261126-100000.json"
    broken.write_text(content, encoding="utf-8")
    result = runner.invoke(app, ["checklist", "--json", "--tier", "advanced"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["measured"] is None
    assert f"Warning: bench report {broken}" in result.stderr.replace("\n", "")
    human = runner.invoke(app, ["checklist", "--tier", "advanced"], env={"COLUMNS": "300"})
    assert human.exit_code == 0 and "not measured" in human.stdout
    # The report is there, damaged: the last line says so, not that there is none.
    assert f"Measured: nothing; the newest bench report, {broken}, is damaged" in human.stdout
    assert "no bench report in" not in human.stdout


def test_fields_of_the_wrong_type_in_a_report_are_not_measurements(runner, fake_probe, tmp_path):
    """An old or hand-edited report: what is not a number is null, and a row without a median is not measured."""
    fake_probe(MACHINES["no GPU"])
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"environment": ["H200"], "results": [
        {"preset": "advanced", "median_s": 0.5, "speedup_vs_baseline": "4x", "peak_vram_mib": [1],
         "psnr_vs_baseline_db": "inf"},
        {"preset": "beginner", "median_s": "fast"}]}), encoding="utf-8")
    tiers = json.loads(runner.invoke(app, ["checklist", "--json", "--bench", str(report)]).stdout)
    measured = {tier["tier"]: tier["measured"] for tier in tiers}
    assert measured["advanced"]["median_s"] == 0.5 and measured["advanced"]["psnr_vs_baseline_db"] == "inf"
    assert measured["advanced"]["speedup_vs_baseline"] is None and measured["advanced"]["peak_vram_mib"] is None
    assert measured["advanced"]["device"] is None and measured["beginner"] is None
    human = runner.invoke(app, ["checklist", "--bench", str(report)])
    assert human.exit_code == 0, human.output
    assert "0.5 s/image" in human.stdout


def test_infinity_and_nan_in_an_old_report_stay_valid_json(runner, fake_probe, tmp_path):
    """Python's json reads NaN and Infinity, which are not JSON: `checklist --json` must not write them back."""
    fake_probe(MACHINES["no GPU"])
    report = tmp_path / "old.json"
    report.write_text('{"results": [{"preset": "advanced", "median_s": 0.5, "peak_vram_mib": NaN, '
                      '"psnr_vs_baseline_db": Infinity, "speedup_vs_baseline": Infinity}, '
                      '{"preset": "beginner", "median_s": Infinity}]}')
    result = runner.invoke(app, ["checklist", "--json", "--bench", str(report)])
    tiers = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
    measured = {tier["tier"]: tier["measured"] for tier in tiers}
    assert measured["advanced"]["psnr_vs_baseline_db"] == "inf" and measured["advanced"]["peak_vram_mib"] is None
    assert measured["beginner"] is None
    assert measured["advanced"]["speedup_vs_baseline"] is None  # only PSNR is infinite when images are equal
    human = runner.invoke(app, ["checklist", "--tier", "advanced", "--bench", str(report)])
    assert human.exit_code == 0, human.output


def test_human_tables_print_brackets_as_text(runner, fake_probe, tmp_path, monkeypatch):
    """rich reads `[xformers]` as markup: the printed reason must still name the extra to install."""
    monkeypatch.setenv("COLUMNS", "400")  # no cell wraps
    mine = tmp_path / "mine.yaml"
    mine.write_text("tier: mine\nscenario: '[red]x[/red] test'\nattention: xformers\n", encoding="utf-8")
    fake_probe(machine(RTX_3060))
    result = runner.invoke(app, ["checklist", "--tier", str(mine)])
    assert result.exit_code == 0, result.output
    assert "nitro-cli[xformers]" in result.stdout and "[red]x[/red] test" in result.stdout


@pytest.mark.parametrize("fake, device, overrides, setting, reason", [
    # The builder skips these (tests/test_expert_knobs.py): the checklist must say the same.
    (MACHINES["no GPU"], "cpu", ["compile=none", "compile_vae=true"], "compile_vae: true", "compile is none"),
    (MACHINES["no GPU"], "cpu", ["compile=none", "compile_text_encoder=true"], "compile_text_encoder: true",
     "compile is none"),
    (MACHINES["no GPU"], "cpu", ["compile=none", "inductor_tuning=true"], "inductor_tuning: true", "compile is none"),
    (machine(compiler_available=False), "cpu", ["compile=default", "compile_vae=true"], "compile_vae: true",
     "a C++ compiler"),
    (MACHINES["RTX 3060 12 GB"], "cuda", ["attention=sliced", "sdpa_backend=flash"], "sdpa_backend: flash",
     "sliced attention, not SDPA"),
    (MACHINES["RTX 3060 12 GB"], "cuda", ["sdpa_backend=flash"], "sdpa_backend: flash", "runs in float32"),
    (MACHINES["GTX 1060 6 GB"], "cuda", ["precision=float16", "sdpa_backend=cudnn"], "sdpa_backend: cudnn",
     "runs in float32"),
    (machine(gpu("Tesla T4", (7, 5), 15360)), "cuda", ["precision=float16", "sdpa_backend=flash"],
     "sdpa_backend: flash", "needs 8.0+"),
    # On a CPU the builder skips bitsandbytes for want of a GPU, installed or not: installing it would not help.
    (MACHINES["no GPU"], "cpu", ["quantization=nf4"], "quantization: nf4", "needs a GPU"),
    # No bf16, and fp16 is what the GTX 16xx turns into NaNs (black images): bfloat16 falls back to float32.
    (machine(gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5), 5936)), "cuda", ["precision=bfloat16"],
     "precision: bfloat16", "float32 used"),
    # Triton installed, but it compiles for compute capability 7.0+ only: torch raises GPUTooOldForTriton.
    (MACHINES["GTX 1060 6 GB"], "cuda", ["compile=reduce-overhead"], "compile: reduce-overhead", "needs 7.0+"),
    (MACHINES["GTX 1060 6 GB"], "cuda", ["compile=default", "compile_vae=true"], "compile_vae: true", "needs 7.0+"),
    (MACHINES["no GPU"], "cpu", ["offload=model"], "offload: model", "already on the CPU"),
    # No compiler: the CPU's "runs without CUDA graphs" must not make an unavailable compile look available.
    (machine(compiler_available=False), "cpu", ["compile=reduce-overhead"], "compile: reduce-overhead",
     "a C++ compiler"),
    (MACHINES["RTX 3060 12 GB"], "cuda", ["feature_cache_interval=2"], "feature_cache_interval: 2", "no step index"),
])
def test_checklist_refuses_what_the_builder_skips(fake, device, overrides, setting, reason):
    from nitro_cli.tier_checklist import tier_items

    mine = load_preset("baseline", overrides).settings
    items = {item.setting: item for item in tier_items(mine, load_preset("baseline").settings, device, fake)}
    assert items[setting].available is False and reason in items[setting].reason


def test_max_autotune_on_a_cpu_says_it_runs_without_cuda_graphs():
    from nitro_cli.tier_checklist import tier_items

    mine = load_preset("baseline", ["compile=max-autotune"]).settings
    (item,) = tier_items(mine, load_preset("baseline").settings, "cpu", MACHINES["no GPU"])
    assert item.available and "no CUDA device" in item.reason and "CUDA graphs" in item.reason


@pytest.mark.parametrize("fake, device, setting", [
    (MACHINES["no GPU"], "cpu", "fuse_qkv: true"),
    (MACHINES["RTX 3060 12 GB"], "cuda", "fuse_qkv: true"),
    (MACHINES["RTX 3060 12 GB"], "cuda", "sdpa_backend: flash"),
])
def test_settings_for_sdpa_count_xformers_falling_back_to_sdpa(fake, device, setting):
    from nitro_cli.tier_checklist import tier_items

    mine = load_preset("baseline", ["precision=float16", "attention=xformers", "fuse_qkv=true",
                                    "sdpa_backend=flash"]).settings
    items = {item.setting: item for item in tier_items(mine, load_preset("baseline").settings, device, fake)}
    assert items["attention: xformers"].available is False
    assert items[setting].available is True, items[setting].reason


def test_fuse_qkv_counts_bitsandbytes_skipped_on_a_cpu():
    from nitro_cli.tier_checklist import tier_items

    mine = load_preset("baseline", ["quantization=nf4", "fuse_qkv=true"]).settings
    items = {item.setting: item for item in tier_items(mine, load_preset("baseline").settings, "cpu",
                                                       MACHINES["no GPU"])}
    assert items["quantization: nf4"].available is False
    assert items["fuse_qkv: true"].available is True, items["fuse_qkv: true"].reason


@pytest.mark.parametrize("model, shown", [("random:tiny", "random:tiny (random weights)"),
                                          ("nitrosocke/Nitro-Diffusion", "nitrosocke/Nitro-Diffusion")])
def test_a_measurement_names_the_model_it_was_made_with(runner, fake_probe, tmp_path, model, shown):
    """random:tiny's seconds per image are not a tier's on a real model: the table says whose they are."""
    fake_probe(MACHINES["no GPU"])
    report = write_bench(tmp_path, "mine.json", 0.5, model=model)
    human = runner.invoke(app, ["checklist", "--tier", "advanced", "--bench", str(report)], env={"COLUMNS": "300"})
    assert f"0.5 s/image, 4.20x vs baseline, 2724 MiB peak VRAM, {shown}, on NVIDIA H200" in human.stdout
    markdown = runner.invoke(app, ["checklist", "--markdown", "--tier", "advanced", "--bench", str(report)])
    assert f"{shown}, on NVIDIA H200" in markdown.stdout


def test_a_measurement_says_its_steps_size_and_batch(runner, fake_probe, tmp_path):
    """A dry run's `nitro bench --steps 2 --width 64 --height 64` seconds sat beside the tier's `steps: 25` as if
    they were its own, and a `--batch-size 2` run's as if at the tier's batch: the figure says how it was made."""
    fake_probe(MACHINES["no GPU"])
    report = tmp_path / "dry-run.json"
    report.write_text(json.dumps({"environment": {"device": "AMD EPYC (2 logical CPUs)", "model": "random:tiny"},
                                  "results": [{"preset": "advanced", "median_s": 0.0795, "steps": 2, "width": 64,
                                               "height": 64, "batch_size": 2}]}), encoding="utf-8")
    human = runner.invoke(app, ["checklist", "--tier", "advanced", "--bench", str(report)], env={"COLUMNS": "300"})
    assert "0.0795 s/image (2 steps, 64x64, batch 2), random:tiny (random weights)" in human.stdout
    (tier,) = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", "advanced", "--bench", str(report)]).stdout)
    measured = tier["measured"]
    assert (measured["steps"], measured["width"], measured["height"], measured["batch_size"]) == (2, 64, 64, 2)
    assert measured["vram_overrides"] == []


def test_a_sliced_attention_item_is_not_judged_by_xformers(runner, fake_probe, tmp_path):
    """Only `attention: xformers` needs the xformers package: sliced attention runs anywhere."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("tier: mine\nattention: sliced\n", encoding="utf-8")
    fake_probe(machine(RTX_3060))
    item = items_of(json.loads(runner.invoke(app, ["checklist", "--json", "--tier", str(mine)]).stdout),
                    "mine")["attention: sliced"]
    assert item["available"] is True and item["reason"] == ""


@pytest.mark.parametrize("shipped", [True, False])
def test_a_users_file_named_like_a_tier_takes_only_its_own_row(runner, fake_probe, tmp_path, shipped):
    """`--tier mine/advanced.yaml`: a report row `advanced` of the shipped file is not this file's measurement."""
    fake_probe(MACHINES["no GPU"])
    report = write_bench(tmp_path, "report.json", 0.5)
    data = json.loads(report.read_text(encoding="utf-8"))
    for row in data["results"]:
        row["shipped"] = shipped
    report.write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "mine").mkdir()
    mine = tmp_path / "mine" / "advanced.yaml"
    mine.write_text("tier: advanced\nsteps: 20\n", encoding="utf-8")
    tiers = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", str(mine), "--bench", str(report)]).stdout)
    assert (tiers[0]["measured"] is None) is shipped


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="makes a symbolic link")
def test_a_link_to_nothing_among_the_reports_is_passed_over(runner, fake_probe):
    """A report that is a link to nothing (or one removed while checklist looked) was a FileNotFoundError
    traceback: the newest readable report is used."""
    fake_probe(MACHINES["no GPU"])
    newest = write_bench(paths.bench_dir(), "bench-20261126-100000.json", 0.7)
    (paths.bench_dir() / "bench-20261127-100000.json").symlink_to(paths.bench_dir() / "gone.json")
    result = runner.invoke(app, ["checklist", "--json", "--tier", "advanced"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["measured"]["file"] == str(newest)


def test_the_newest_report_of_two_in_one_second_is_the_suffixed_one(runner, fake_probe):
    """bench names a second report of the same second `bench-STAMP-2.json`, which sorts before `bench-STAMP.json`."""
    fake_probe(MACHINES["no GPU"])
    write_bench(paths.bench_dir(), "bench-20261126-100000.json", 1.0, age_s=1)
    second = write_bench(paths.bench_dir(), "bench-20261126-100000-2.json", 0.7)
    (tier,) = json.loads(runner.invoke(app, ["checklist", "--json", "--tier", "advanced"]).stdout)
    assert tier["measured"]["median_s"] == 0.7 and tier["measured"]["file"] == str(second)


def test_human_tables_say_no_for_what_this_machine_cannot_do(runner, fake_probe):
    fake_probe(MACHINES["no GPU"])
    markdown = runner.invoke(app, ["checklist", "--markdown", "--tier", "expert"]).stdout
    assert "| cudnn benchmark | `cudnn_benchmark: true` | no: no CUDA device" in markdown
    table = runner.invoke(app, ["checklist", "--tier", "expert"], env={"COLUMNS": "300"}).stdout
    (row,) = [line for line in table.splitlines() if "cudnn_benchmark: true" in line]
    assert [cell.strip() for cell in row.split("│")][3] == "no"


def test_an_empty_tier_is_a_usage_error(runner, fake_probe):
    """A script's `--tier "$TIER"` with the variable unset must not quietly list every tier."""
    fake_probe(MACHINES["no GPU"])
    result = runner.invoke(app, ["checklist", "--json", "--tier", ""])
    assert result.exit_code == 2 and "Error: --tier is empty" in result.stderr and result.stdout == ""


def test_an_empty_bench_option_is_a_usage_error(runner, fake_probe):
    """`--bench "$REPORT"` with the variable unset: typer read "" as the current folder ("bench report . is not
    readable JSON: Is a directory")."""
    fake_probe(MACHINES["no GPU"])
    result = runner.invoke(app, ["checklist", "--bench", ""])
    assert result.exit_code == 2 and "Error: --bench is empty" in result.stderr


def test_a_bar_in_a_markdown_cell_does_not_end_the_cell():
    """A library's error text among an item's reasons could hold a | and shift the table's columns."""
    from nitro_cli.commands.checklist import _markdown

    tier = build_checklist(MACHINES["no GPU"], ["advanced"], None, None)[0]
    item = dataclasses.replace(tier.items[0], available=False, reason="xformers: ops | not built")
    table = _markdown([dataclasses.replace(tier, items=[item])], "source", "machine")
    [row] = [line for line in table.splitlines() if line.startswith(f"| {item.name} |")]
    assert "ops \\| not built" in row and row.replace("\\|", "").count("|") == 5
