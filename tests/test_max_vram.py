"""`--max-vram` on generate and bench: the choice vram.py makes, said on stderr, applied to the run."""

import json

import pytest

from nitro_cli import paths, vram
from nitro_cli.cli import app
from nitro_cli.errors import UsageError
from nitro_cli.presets import load_preset
from tests.conftest import FAST

from fake_machines import GTX_1060, RTX_3060, machine



def test_generate_without_preset_picks_the_fastest_that_fits(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", *FAST, "--max-vram", "2.8", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    # The plan is made for the requested size (64x64 here), so compare with the same request.
    small = vram.plan_for_vram(2.8, width=64, height=64, bitsandbytes_installed=False)
    assert small.preset == "lowvram" and small.fits  # advanced needs 2.65 GiB before headroom
    assert "--max-vram 2.8 GiB: --preset lowvram. lowvram for 64x64, batch 1" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["preset"] == "lowvram"


def test_generate_with_a_preset_adds_what_it_needs(runner, tmp_path):
    needed = vram.plan_for_preset("advanced", load_preset("advanced", ["width=64", "height=64"]).settings, 2.8,
                                  bitsandbytes_installed=False)
    assert needed.fits and "offload=model" in needed.overrides
    result = runner.invoke(app, ["generate", "castle", *FAST, "--preset", "advanced", "--max-vram", "2.8",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "--preset advanced --set offload=model --set vae.slicing=true --set vae.tiling=true" in result.stderr
    assert "with model CPU offload" in result.stderr


def test_generate_that_cannot_fit_is_a_usage_error_before_loading(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", *FAST, "--preset", "baseline", "--max-vram", "1.5",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Error: --max-vram 1.5: baseline with sequential CPU offload" in result.stderr
    assert "safety_checker=false" in result.stderr and not list(tmp_path.glob("*.png"))
    zero = runner.invoke(app, ["generate", "castle", *FAST, "--max-vram", "0"])
    assert zero.exit_code == 2 and "positive, finite number of GiB" in zero.stderr


def test_fit_request_counts_fp32_on_cards_without_fast_fp16():
    gtx = machine(GTX_1060)
    preset, overrides, plan = vram.fit_request(4.0, None, [], default_preset="beginner", machine=gtx, device="cuda")
    assert preset == "minvram" and "fp32" in plan.explanation
    preset, _, _ = vram.fit_request(4.0, None, [], default_preset="beginner", machine=gtx, device="cpu")
    assert preset == "advanced"  # on the CPU nothing runs on that GPU
    # The user's own --set comes after the plan's, so it wins.
    _, overrides, _ = vram.fit_request(2.0, None, ["quantization=none"], default_preset="beginner", machine=gtx,
                                       device="cpu")
    assert overrides[-1] == "quantization=none"


def test_bench_fits_each_preset_and_fails_the_one_that_cannot(runner, tmp_path):
    report_file = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--presets", "baseline,beginner", "--runs", "1", "--warmup", "0",
                                 *FAST, "--max-vram", "3", "--json", str(report_file)])
    assert result.exit_code == 1, result.output  # baseline (fp32) cannot fit 3 GiB
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["environment"]["max_vram_gib"] == 3
    baseline, beginner = report["results"]
    assert baseline["error"].startswith("--max-vram 3: baseline") and baseline["vram_plan"] is None
    job = ["steps=2", "width=64", "height=64"]
    assert not vram.plan_for_preset("baseline", load_preset("baseline", job).settings, 3.0).fits
    plan = vram.plan_for_preset("beginner", load_preset("beginner", job).settings, 3.0, bitsandbytes_installed=False)
    assert plan.fits and plan.overrides
    assert beginner["error"] is None and beginner["vram_plan"] == vram.describe_choice(3.0, "beginner", plan)
    assert beginner["vram_overrides"] == list(plan.overrides)
    assert "each preset ran with what it needs to fit" in result.stderr.replace("\n", " ")
    # checklist showed this row as beginner's figure without the settings added to fit.
    checklist = runner.invoke(app, ["checklist", "--markdown", "--tier", "beginner", "--bench", str(report_file)])
    added = " ".join(f"--set {o}" for o in plan.overrides)
    assert f"(2 steps, 64x64, batch 1), fitted to --max-vram with {added}," in checklist.stdout


@pytest.mark.parametrize("command", ["generate", "bench"])
@pytest.mark.parametrize("budget", ["nan", "inf"])
def test_a_budget_that_is_not_a_finite_number_is_a_usage_error(runner, tmp_path, command, budget):
    """nan fits nothing and inf everything; both would reach the JSON report as NaN/Infinity, which is not JSON."""
    args = ["castle", "--out", str(tmp_path)] if command == "generate" else ["--presets", "beginner"]
    result = runner.invoke(app, [command, *args, *FAST, "--max-vram", budget])
    assert result.exit_code == 2, result.output
    assert f"--max-vram must be a positive, finite number of GiB, not {budget}" in result.stderr
    assert not paths.bench_dir().exists() and not list(tmp_path.glob("*.png"))


def _run_peak_gib(preset, overrides):
    settings = load_preset(preset, overrides).settings
    return vram.estimate_peak_gib(vram.MemoryLayout.of(settings), settings.width, settings.height, settings.batch_size)


def test_without_a_preset_the_plan_counts_the_users_own_set():
    """The user's --set is applied after the plan's choice, so the plan is made with it. As shipped, lowvram fits
    3.4 GiB (1.99 GiB expected); in fp32 it does not (3.93 GiB), and with its weights kept on the GPU nothing does."""
    rtx = machine(RTX_3060)
    preset, overrides, plan = vram.fit_request(3.4, None, ["precision=float32"], default_preset="beginner",
                                               machine=rtx, device="cuda")
    assert preset == "minvram"
    assert plan.expected_peak_gib == round(_run_peak_gib(preset, overrides), 2) and plan.fits
    with pytest.raises(UsageError, match="--max-vram 3.4"):
        vram.fit_request(3.4, None, ["offload=none"], default_preset="beginner", machine=rtx, device="cuda")


def test_the_plan_is_made_for_the_largest_image_of_a_prompts_file(runner, tmp_path):
    """A prompts file's line may ask for its own size: --max-vram must fit that image too, not only the command
    line's size (1024x1024 needs more than 2 GiB even with minvram; 64x64 does not)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("small castle\n--prompt big castle --width 1024 --height 1024\n", encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--prompts-file", str(prompts), *FAST, "--max-vram", "2",
                                 "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Error: --max-vram 2: minvram for 1024x1024" in result.stderr and not list(out.glob("*.png"))
    preset, _, plan = vram.fit_request(4.5, None, [], default_preset="beginner", machine=machine(RTX_3060),
                                       device="cuda", largest_image=(1024, 1024))
    assert preset == "lowvram" and plan.fits  # advanced fits 4.5 GiB at 512x512, not at 1024x1024


def test_a_prompts_file_that_is_a_pipe_is_read_once(runner, tmp_path):
    """`--prompts-file <(...)` names a pipe (/dev/fd/N), which a second read finds empty. --max-vram needs the
    sizes before the run does, and both must come from the one read."""
    import os

    read_end, write_end = os.pipe()
    os.write(write_end, "small castle\nsmall dragon\n".encode())
    os.close(write_end)
    try:
        result = runner.invoke(app, ["generate", "--prompts-file", f"/dev/fd/{read_end}", *FAST, "--max-vram", "4",
                                     "--out", str(tmp_path), "--json"])
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["prompt"] for line in result.stdout.splitlines()] == ["small castle", "small dragon"]


def test_with_a_preset_the_plans_overrides_come_after_the_users_own():
    """The plan is made from the user's settings: what it adds to fit (tiling here) must win over them."""
    preset, overrides, plan = vram.fit_request(2.8, "advanced", ["vae.tiling=false"], default_preset="beginner",
                                               machine=machine(RTX_3060), device="cuda")
    assert preset == "advanced" and "vae.tiling=true" in plan.overrides
    settings = load_preset(preset, overrides).settings
    assert (settings.offload, settings.vae.tiling) == ("model", True)


def test_fitting_never_trades_sequential_offload_for_model_offload():
    """minvram untiled at 2048x2048: model offload with tiling would be expected to fit 5 GiB, but minvram's own
    sequential offload with tiling fits with less."""
    settings = load_preset("minvram", ["vae.tiling=false", "width=2048", "height=2048"]).settings
    plan = vram.plan_for_preset("minvram", settings, 5.0, bitsandbytes_installed=False)
    assert plan.fits and "offload=sequential" in plan.overrides and "offload=model" not in plan.overrides


def test_fitting_keeps_the_quantization_a_preset_already_has():
    settings = load_preset("advanced", ["quantization=int8"]).settings
    plan = vram.plan_for_preset("advanced", settings, 2.2, bitsandbytes_installed=True)
    assert plan.fits and "offload=sequential" in plan.overrides
    assert not any(o.startswith("quantization=") for o in plan.overrides)


@pytest.mark.parametrize("preset", [None, "advanced"])
def test_the_plan_is_made_for_a_tall_image_of_a_prompts_file(preset):
    """A prompts file's 512x1536 line is three 512x512 images' pixels: with or without --preset, the plan counts
    it (advanced fits 4 GiB at 512x512, not at 512x1536)."""
    rtx = machine(RTX_3060)
    chosen, _, plan = vram.fit_request(4.0, preset, [], default_preset="beginner", machine=rtx, device="cuda",
                                       largest_image=(512, 1536))
    if preset is None:
        assert chosen == "lowvram" and "512x1536" in plan.explanation
    else:
        assert chosen == "advanced" and "offload=model" in plan.overrides
    assert vram.fit_request(4.0, preset, [], default_preset="beginner", machine=rtx,
                            device="cuda")[2].overrides == ()


def test_a_cards_memory_is_shown_as_people_write_it():
    """doctor's VRAM note on a 3910 MiB card said "fits 3.81836 GiB"."""
    plan = vram.plan_for_vram(3910 / 1024)
    assert "3.82 GiB" in plan.explanation and "3.818" not in plan.explanation
