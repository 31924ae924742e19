"""`nitro doctor` on fake machines: checks, exit code and recommended preset for each."""

import json
import math

import pytest

from fake_machines import A100, MACHINES, RTX_3060, gpu, machine

from nitro_cli import diagnosis, hardware, vram
from nitro_cli.cli import app

# (machine, recommended preset, exit code, {check name: status} that must hold)
EXPECTED = [
    ("no GPU", "beginner", 0, {"cuda": "warn", "sdpa": "ok", "xformers": "ok"}),
    # fp32 there (no fast fp16): advanced is expected at 5.24 GiB + 0.5 GiB headroom, inside its 5.93 GiB.
    ("GTX 1060 6 GB", "lowvram", 0, {"cuda": "ok", "fp16 (GPU 0 NVIDIA GeForce GTX 1060 6GB)": "warn"}),
    ("RTX 3060 12 GB", "advanced", 0, {"cuda": "ok", "fp16 (GPU 0 NVIDIA GeForce RTX 3060)": "ok"}),
    ("A100 80 GB", "expert", 0, {"vram (GPU 0 NVIDIA A100-SXM4-80GB)": "ok", "sdpa (GPU 0 NVIDIA A100-SXM4-80GB)": "ok"}),
    ("two GPUs", "deploy", 0, {"fp16 (GPU 1 NVIDIA A100-SXM4-80GB)": "ok"}),
    ("broken xformers", "advanced", 1, {"xformers": "fail"}),
]


@pytest.mark.parametrize("name, preset, exit_code, statuses", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_doctor_json_on_fake_machines(runner, fake_probe, name, preset, exit_code, statuses):
    fake_probe(MACHINES[name])
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == exit_code, result.output
    report = json.loads(result.stdout)
    assert report["recommended_preset"] == preset
    assert report["cuda_available"] is MACHINES[name].has_gpu
    assert len(report["devices"]) == len(MACHINES[name].gpus)
    got = {check["name"]: check["status"] for check in report["checks"]}
    for check_name, status in statuses.items():
        assert got[check_name] == status, report["checks"]
    assert all(check["status"] in ("ok", "warn", "fail") and check["detail"] for check in report["checks"])
    for field in ("python", "torch", "diffusers", "packages"):
        assert field in report


def test_doctor_device_fields_follow_the_contract(runner, fake_probe):
    fake_probe(MACHINES["GTX 1060 6 GB"])
    device = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)["devices"][0]
    assert device == {**device, "name": "NVIDIA GeForce GTX 1060 6GB", "compute_capability": "6.1",
                      "total_vram_mib": 6072, "bf16": False, "fast_fp16": False}
    assert device["free_vram_mib"] == 6072 - 300


@pytest.mark.parametrize("card, problem, not_said", [
    (gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5), 5936), "NaN", "no fast fp16"),  # fast fp16, wrong results
    (gpu("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6072), "no fast fp16", "black images"),  # right results, slowly
])
def test_fp16_check_names_the_cards_own_problem(card, problem, not_said):
    fake = machine(card)
    check = next(c for c in diagnosis.run_checks(fake) if c.name.startswith("fp16"))
    assert check.status == "warn" and problem in check.detail and not_said not in check.detail
    assert any(problem in note for note in diagnosis.recommend(fake).notes)


def test_card_without_fast_fp16_is_told_fp32_is_needed():
    recommendation = diagnosis.recommend(MACHINES["GTX 1060 6 GB"])
    assert any("fp32 needed" in note for note in recommendation.notes)
    assert not diagnosis.recommend(MACHINES["RTX 3060 12 GB"]).notes


def checks_of(probed):
    """doctor's checks of the `probed` machine, by name."""
    return {c.name: c for c in diagnosis.run_checks(probed)}


def _card(total_mib, name="NVIDIA GeForce RTX 3090", capability=(8, 6)):
    return machine(gpu(name, capability, total_mib))


def _edge_mib(preset, fp32=False):
    """The smallest card (MiB) vram.py expects `preset` to fit, at its own size and batch."""
    from nitro_cli.presets import load_preset

    settings = load_preset(preset).settings
    peak = vram.estimate_peak_gib(vram.MemoryLayout.of(settings, fp32), settings.width, settings.height,
                                  settings.batch_size)
    return math.ceil((peak * vram.ESTIMATE_MARGIN + vram.HEADROOM_GIB) * 1024)


@pytest.mark.parametrize("preset, below", [("advanced", "lowvram"), ("lowvram", "minvram")])
def test_doctor_steps_down_exactly_where_vram_rule_does(preset, below):
    edge = _edge_mib(preset)
    assert diagnosis.recommend(_card(edge)).preset == preset
    assert diagnosis.recommend(_card(edge - 1)).preset == below
    assert diagnosis.vram_plan(_card(edge - 1)).preset == below


@pytest.mark.parametrize("total_mib, preset", [(2048, "minvram"), (3072, "lowvram"), (3900, "advanced"),
                                               (7980, "advanced"), (24576, "expert")])
def test_vram_on_named_card_sizes(total_mib, preset):
    recommendation = diagnosis.recommend(_card(total_mib))
    assert recommendation.preset == preset
    if preset in vram.MEMORY_SAVING:
        assert any(note.startswith(f"VRAM: {preset} for 512x512") for note in recommendation.notes)


def test_a_16_gb_card_is_a_large_card():
    """torch reports a card's memory less what the driver keeps (fake_machines' RTX 3060 12 GB: 12045 MiB), so a
    16 GB card (RTX 4080, A4000) shows under 16384 MiB, with ECC on well under, and must still count as 16 GB
    for the expert rule."""
    card_16_gb = round(16384 * RTX_3060.total_vram_mib / (12 * 1024))
    assert card_16_gb < 16384
    assert diagnosis.recommend(_card(card_16_gb, "NVIDIA GeForce RTX 4080", (8, 9))).preset == "expert"
    # ECC on a GDDR card keeps a sixteenth of it back: a 16 GB RTX A4000 with ECC on shows about 15100 MiB.
    card_16_gb_with_ecc = round(card_16_gb * 15 / 16)
    assert card_16_gb_with_ecc < 15 * 1024
    assert diagnosis.recommend(_card(card_16_gb_with_ecc, "NVIDIA RTX A4000", (8, 6))).preset == "expert"
    assert diagnosis.recommend(_card(12288, "NVIDIA GeForce RTX 4070", (8, 9))).preset == "advanced"


def test_cards_without_fast_fp16_are_planned_in_fp32():
    """A GTX 1650 4 GB runs fp32: lowvram's 1.99 GiB becomes about 3.9 GiB, too much; an RTX card of the same
    size fits advanced in fp16."""
    assert _edge_mib("lowvram", fp32=True) > 4096 > _edge_mib("advanced")
    assert diagnosis.recommend(_card(4096, "NVIDIA GeForce GTX 1650", (7, 5))).preset == "minvram"
    assert diagnosis.recommend(_card(4096)).preset == "advanced"


def test_small_card_vram_check_names_the_plan():
    checks = checks_of(_card(3072))
    check = checks["vram (GPU 0 NVIDIA GeForce RTX 3090)"]
    assert check.status == "warn" and check.fix == "--preset lowvram" and "expected peak" in check.detail
    roomy = checks_of(_card(7980))
    assert roomy["vram (GPU 0 NVIDIA GeForce RTX 3090)"].status == "ok"


def test_deploy_needs_every_gpu_to_fit_its_batch():
    edge = _edge_mib("deploy")
    two = lambda mib: machine(gpu("NVIDIA A10", (8, 6), 24000), gpu("NVIDIA A10", (8, 6), mib, index=1))
    assert diagnosis.recommend(two(edge)).preset == "deploy"
    assert diagnosis.recommend(two(edge - 1)).preset != "deploy"


def test_large_card_without_triton_gets_advanced_with_a_note():
    recommendation = diagnosis.recommend(machine(A100, compiler_available=False))
    assert recommendation.preset == "advanced"
    assert any("Triton" in note for note in recommendation.notes)


def test_pascal_card_with_triton_is_told_torch_compile_does_not_run():
    """Triton compiles for compute capability 7.0+ only: on a GTX 1060 torch.compile raises GPUTooOldForTriton,
    and installing Triton does not help."""
    checks = checks_of(MACHINES["GTX 1060 6 GB"])
    check = checks["torch.compile"]
    assert check.status == "warn" and "7.0+" in check.detail and "pip install triton" not in check.fix
    # A 24 GB Pascal card (Tesla P40) without Triton: advanced, and no advice to install Triton.
    p40 = machine(gpu("Tesla P40", (6, 1), 22919), compiler_available=False)
    check = checks_of(p40)["torch.compile"]
    assert check.status == "warn" and "7.0+" in check.detail and "pip install triton" not in check.fix
    recommendation = diagnosis.recommend(p40)
    assert recommendation.preset == "advanced"
    assert any("7.0+" in note for note in recommendation.notes)
    assert not any("pip install triton" in note for note in recommendation.notes)


def test_several_gpus_without_triton_get_deploy_with_a_note():
    """deploy compiles like expert: without Triton it runs eager, and the user should hear it."""
    two = machine(A100, gpu("NVIDIA A100-SXM4-80GB", (8, 0), 81154, index=1), compiler_available=False)
    recommendation = diagnosis.recommend(two)
    assert recommendation.preset == "deploy"
    assert any("pip install triton" in note for note in recommendation.notes)


def test_small_gpus_do_not_make_a_deploy_machine():
    small = machine(gpu("NVIDIA GeForce GTX 1650", (7, 5), 3900), gpu("NVIDIA GeForce GTX 1650", (7, 5), 3900, 1))
    assert diagnosis.recommend(small).preset == "minvram"


def test_bitsandbytes_without_its_cuda_library_fails():
    broken = machine(RTX_3060, packages={"bitsandbytes": "0.45.0"},
                     bitsandbytes_test=hardware.PackageTest(False, "libbitsandbytes_cuda130.so not found"))
    checks = checks_of(broken)
    assert checks["bitsandbytes"].status == "fail" and "pip install -U bitsandbytes" in checks["bitsandbytes"].fix
    assert diagnosis.failed(list(checks.values()))
    working = machine(RTX_3060, packages={"bitsandbytes": "0.45.0"},
                      bitsandbytes_test=hardware.PackageTest(True, "4-bit matmul ran"))
    assert checks_of(working)["bitsandbytes"].status == "ok"


@pytest.mark.parametrize("card, torchao, detail, fix", [
    (gpu("NVIDIA H100 80GB HBM3", (9, 0), 81559), "0.18.0", "fp8 tensor cores and torchao 0.18.0", ""),
    (gpu("NVIDIA L4", (8, 9), 22478), None, "fp8 tensor cores; torchao not installed", "pip install 'nitro-cli[fp8]'"),
    (A100, "0.18.0", "NVIDIA A100-SXM4-80GB (compute capability 8.0) has no fp8 tensor cores", ""),
])
def test_fp8_check_says_whether_fp8_matmul_runs(card, torchao, detail, fix):
    checks = checks_of(machine(card, packages={"torchao": torchao}))
    assert checks["fp8"].status == "ok" and checks["fp8"].detail.startswith(detail) and checks["fp8"].fix == fix
    assert "fp8" not in {c.name for c in diagnosis.run_checks(MACHINES["no GPU"])}


@pytest.mark.parametrize("amx, detail", [(True, "AMX with bf16: half-precision presets run in bfloat16"),
                                         (False, "no AMX: presets run in float32")])
def test_cpu_check_says_which_precision_the_presets_run_in(amx, detail):
    checks = checks_of(machine(cpu_amx_bf16=amx))
    assert checks["cpu"].status == "ok" and checks["cpu"].detail.startswith(detail)
    assert "cpu" not in {c.name for c in diagnosis.run_checks(MACHINES["A100 80 GB"])}


def test_missing_required_package_fails_and_offline_uncached_model_warns():
    broken = machine(packages={"diffusers": None}, hf_offline=True)
    checks = checks_of(broken)
    assert checks["packages"].status == "fail" and "diffusers" in checks["packages"].detail
    assert checks["model"].status == "warn" and "HF_HUB_OFFLINE" in checks["model"].detail
    cached = machine(model_cache=hardware.CachedModel("nitrosocke/Nitro-Diffusion", "/hf/models--x", 5120))
    assert checks_of(cached)["model"].status == "ok"
    broken = machine(model_cache=hardware.CachedModel("nitrosocke/Nitro-Diffusion", "/hf/models--x", 5120,
                                                      "unet has no weights file"))
    check = checks_of(broken)["model"]
    assert check.status == "warn" and "incomplete: unet has no weights file" in check.detail
    assert "hf download nitrosocke/Nitro-Diffusion" in check.fix


def test_the_human_report_goes_to_stdout_with_a_summary_line_and_the_error_to_stderr(runner, fake_probe):
    """The report is the command's output: `nitro doctor > doctor.txt` for a bug report, `| grep`, `| less`."""
    fake_probe(MACHINES["broken xformers"])
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "Recommended preset" in result.stdout and "Recommended preset" not in result.stderr
    assert result.stderr.startswith("Error: 1 check(s) failed: xformers")
    summary = next(line for line in result.stdout.splitlines() if line.startswith("nitro "))
    assert "NVIDIA GeForce RTX 3060" in summary and "1 fail" in summary and "recommended advanced" in summary


def test_real_probe_on_this_machine(runner):
    """The real, deep probe: runs here (no GPU needed) and reports this machine's torch."""
    result = runner.invoke(app, ["doctor", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == (1 if any(c["status"] == "fail" for c in report["checks"]) else 0)
    assert report["torch"] == hardware.package_version("torch")
    assert report["hf_hub_offline"] is True  # conftest sets HF_HUB_OFFLINE=1


def test_docs_show_the_same_recommendation_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "doctor.md").read_text(encoding="utf-8")
    for number, rule in enumerate(diagnosis.RECOMMENDATION_RULES, start=1):
        assert f"| {number} | {rule.when} | `{rule.preset}` | {rule.reason} |" in doc


def test_a_failed_check_is_an_error_line_naming_it(runner, fake_probe):
    fake_probe(MACHINES["broken xformers"])
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    assert "Error: 1 check(s) failed: xformers" in result.stderr
    json.loads(result.stdout)  # stdout still holds only the report


def test_a_torch_that_does_not_import_is_a_failed_check_not_a_traceback(tmp_path):
    """A CUDA build missing its libraries raises OSError at import: doctor is where that must show."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise OSError("libcudnn.so.9: cannot open shared object file")\n')
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # after the repo root, before site-packages
    result = subprocess.run([sys.executable, "-m", "nitro_cli", "doctor", "--json"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Error: 1 check(s) failed: packages" in result.stderr
    report = json.loads(result.stdout)
    (packages,) = [c for c in report["checks"] if c["name"] == "packages"]
    assert packages["status"] == "fail" and "torch does not import: OSError: libcudnn.so.9" in packages["detail"]
    assert report["cuda_available"] is False and report["devices"] == []
    # generate stops on it the same way: exit 1 with the reason, no traceback from its first `import torch`.
    generate = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "castle", "--model", "random:tiny",
                               "--out", str(tmp_path / "out")], cwd=root, env=env, capture_output=True, text=True,
                              timeout=120)
    assert generate.returncode == 1 and "Traceback" not in generate.stderr, generate.stderr
    assert "Error: torch does not import: OSError: libcudnn.so.9" in generate.stderr and "Hint:" in generate.stderr


def test_human_report_prints_brackets_as_text(runner, fake_probe, monkeypatch):
    """rich reads `[fp8]` as markup: the printed fix must still name the extra to install."""
    monkeypatch.setenv("COLUMNS", "400")  # no cell wraps
    fake_probe(machine(gpu("NVIDIA L4", (8, 9), 22478), packages={"torchao": None}))
    result = runner.invoke(app, ["doctor"])
    assert "pip install 'nitro-cli[fp8]'" in result.stdout


def test_a_long_compile_cache_path_is_shown_whole(runner, fake_probe, monkeypatch):
    """The Machine table cut a long path to fit the terminal ("/home/me/.../nitro…"): useless to copy."""
    import dataclasses

    folder = "/srv/shared/" + "/".join(f"team-{i}-caches" for i in range(8)) + "/nitro/torch-compile"
    fake_probe(dataclasses.replace(MACHINES["no GPU"], compile_cache_dir=folder))
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "compile cache" in line)
    values = []  # the value column of the row and its continuation lines (an empty first column)
    for line in lines[row:]:
        cells = line.split("│")
        if len(cells) != 4 or (values and cells[1].strip()):
            break
        values.append(cells[2].strip())
    assert "".join(values) == folder


def test_an_80_column_report_keeps_gpu_names_and_numbers_whole(runner, fake_probe, monkeypatch):
    """`nitro doctor > doctor.txt` is 80 columns wide: the CUDA devices table cut the card's name to
    `A100-SXM4-…` and its SDPA kernels to `mem_effici…`."""
    fake_probe(MACHINES["two GPUs"])
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    devices = result.stdout.split("CUDA devices")[1].split("Checks")[0]
    assert "…" not in devices
    assert all(word in devices for word in ("A100-SXM4-80GB", "mem_efficient", "81154", "80854", "capability"))
    assert max(len(line) for line in result.stdout.split("For bug reports")[0].splitlines()) <= 80


def test_a_16_gb_card_older_than_compute_capability_8_gets_advanced():
    """Rule 5 asks for 8.0+: a Tesla T4 (7.5, 16 GB) has no bf16 and no FlashAttention, so expert is not its tier."""
    assert diagnosis.recommend(_card(15360, "Tesla T4", (7, 5))).preset == "advanced"


def test_a_gpu_mostly_in_use_is_a_warning():
    busy = machine(gpu("NVIDIA GeForce RTX 3090", (8, 6), 24576, free_mib=8000))
    check = checks_of(busy)["vram (GPU 0 NVIDIA GeForce RTX 3090)"]
    assert check.status == "warn" and check.detail == "16576 of 24576 MiB already in use"


def test_a_gpu_with_only_the_math_attention_kernel_is_a_warning():
    import dataclasses

    math_only = machine(dataclasses.replace(RTX_3060, sdpa_kernels=("math",)))
    check = checks_of(math_only)["sdpa (GPU 0 NVIDIA GeForce RTX 3060)"]
    assert check.status == "warn" and "only the math kernel" in check.detail


def test_little_free_disk_is_a_warning():
    checks = checks_of(machine(free_disk_mib=1000))  # under 1 GiB
    assert checks["disk"].status == "warn" and checks["disk"].detail.startswith("1000 MiB free")
    assert checks_of(machine(free_disk_mib=5000))["disk"].status == "ok"


@pytest.mark.parametrize("package", diagnosis.REQUIRED)
def test_each_required_package_missing_fails(package):
    checks = checks_of(machine(packages={package: None}))
    assert checks["packages"].status == "fail" and package in checks["packages"].detail


def test_a_cuda_build_that_sees_no_gpu_is_told_to_check_the_driver_not_to_reinstall_torch():
    check = checks_of(machine(torch_cuda="13.0"))["cuda"]
    assert check.status == "warn" and "sees no GPU" in check.detail and "nvidia-smi" in check.fix


def test_a_turing_card_without_bf16_still_has_fast_fp16():
    check = checks_of(_card(15360, "Tesla T4", (7, 5)))["fp16 (GPU 0 Tesla T4)"]
    assert check.status == "ok" and "bf16 no" in check.detail


def test_each_gpu_gets_its_own_vram_plan():
    small = gpu("NVIDIA GeForce GTX 1050 3GB", (6, 1), 3072, index=1)
    checks = checks_of(machine(A100, small))
    assert checks["vram (GPU 0 NVIDIA A100-SXM4-80GB)"].status == "ok"
    small_check = checks["vram (GPU 1 NVIDIA GeForce GTX 1050 3GB)"]
    assert small_check.status == "warn" and small_check.fix.startswith("--preset minvram")


def test_gpus_without_fast_fp16_are_not_a_deploy_machine():
    """They run deploy's fp16 batch of 8 in fp32, about twice the memory: two 11 GB Pascal cards fit it in fp16,
    not in fp32."""
    pascal = lambda index: gpu("NVIDIA GeForce GTX 1080 Ti", (6, 1), 11264, index=index)
    assert _edge_mib("deploy") < 11264 < _edge_mib("deploy", fp32=True)
    assert diagnosis.recommend(machine(pascal(0), pascal(1))).preset != "deploy"


def test_doctor_json_bf16_is_the_cards_bf16_not_its_fp16(runner, fake_probe):
    fake_probe(machine(gpu("Tesla T4", (7, 5), 15360)))  # fast fp16, no bf16
    (device,) = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)["devices"]
    assert device["bf16"] is False and device["fast_fp16"] is True


def test_unknown_free_disk_is_no_check_not_a_crash():
    assert "disk" not in {c.name for c in diagnosis.run_checks(machine(free_disk_mib=None))}


def test_doctor_json_top_level_fields_follow_the_contract(runner, fake_probe):
    fake_probe(MACHINES["RTX 3060 12 GB"])
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert (report["python"], report["torch"], report["diffusers"]) == ("3.11.7", "2.13.0+cu130", "0.42.1")
    # "name to version or null": a package that is not installed is there, as null.
    assert report["packages"]["xformers"] is None and report["packages"]["bitsandbytes"] is None


def test_a_cache_folder_that_cannot_be_written_is_a_warning_with_the_fix(runner, tmp_path, monkeypatch):
    """NITRO_CACHE_DIR naming a file: doctor said "compile caches in FILE/torch-compile", all ok, and expert then
    stopped with a traceback at its first compile."""
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("")
    monkeypatch.setenv("NITRO_CACHE_DIR", str(in_the_way))
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    [check] = [check for check in report["checks"] if check["name"] == "cache"]
    assert check["status"] == "warn" and f"{in_the_way} is not a folder" in check["detail"]
    assert check["fix"] == "set NITRO_CACHE_DIR to a folder you can write to"


def test_a_cache_folder_not_made_yet_is_fine_and_doctor_does_not_make_it(tmp_path):
    from nitro_cli import paths

    assert paths.unwritable(tmp_path / "new" / "cache") is None and not (tmp_path / "new").exists()
    assert "cache" not in {c.name for c in diagnosis.run_checks(machine(cache_problem=None))}


@pytest.mark.parametrize("bitsandbytes, overrides", [(None, ["quantization=fp8_storage"]), ("0.50.2", [])],
                         ids=["without-bitsandbytes", "with-bitsandbytes"])
def test_the_recommendation_carries_the_overrides_its_preset_needs_here(runner, fake_probe, bitsandbytes, overrides):
    """A 4 GB card on a default install (bitsandbytes is an extra): doctor recommended `--preset minvram`, whose
    NF4 then stopped generate with "bitsandbytes not installed"; only the vram check's fix had the override."""
    fake_probe(machine(gpu("NVIDIA GeForce GTX 1650", (7, 5), 3910), packages={"bitsandbytes": bitsandbytes}))
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert (report["recommended_preset"], report["recommended_overrides"]) == ("minvram", overrides)
    assert report["recommendation"]["overrides"] == overrides
    shown = "".join(f" --set {override}" for override in overrides)
    assert report["summary"].endswith(f"recommended minvram{shown}")
    assert f"--preset minvram{shown}:" in " ".join(runner.invoke(app, ["doctor"]).stdout.split())
    checklist = runner.invoke(app, ["checklist", "--tier", "minvram", "--markdown"]).stdout
    assert f"recommended preset: minvram{shown}" in " ".join(checklist.split())


def test_little_free_disk_for_the_cache_is_a_warning():
    """The disk check looks where outputs go; an ONNX export or compiled code filling the cache's disk (another
    disk, a small home) failed with doctor saying ok."""
    checks = checks_of(machine(cache_free_disk_mib=500))
    assert checks["cache"].status == "warn" and "500 MiB free for nitro's cache" in checks["cache"].detail
    assert "NITRO_CACHE_DIR" in checks["cache"].fix
    assert "cache" not in checks_of(machine(cache_free_disk_mib=50_000))
