"""ONNX for CPU/edge: `nitro export onnx` writes a folder diffusers' ONNX pipeline loads, whose images
match PyTorch's, and `backend: onnx` runs it through `nitro generate`."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nitro_cli.builder import SCHEDULERS
from nitro_cli.cli import app
from tests.conftest import FAST

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

COMPONENTS = ["text_encoder", "unet", "vae_decoder", "vae_encoder", "safety_checker"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    result = CliRunner().invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def test_export_writes_the_layout_diffusers_loads(exported):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "OnnxStableDiffusionPipeline"
    for name in COMPONENTS:
        assert (exported / name / "model.onnx").stat().st_size > 0
        assert index[name] == ["diffusers", "OnnxRuntimeModel"]
    assert (exported / "tokenizer" / "tokenizer_config.json").is_file()
    assert (exported / "scheduler" / "scheduler_config.json").is_file()
    assert (exported / "feature_extractor" / "preprocessor_config.json").is_file()


def test_graphs_have_the_names_and_dynamic_axes_the_pipeline_feeds(exported):
    import onnxruntime as ort

    def inputs(name):
        session = ort.InferenceSession(str(exported / name / "model.onnx"), providers=["CPUExecutionProvider"])
        return {i.name: i.shape for i in session.get_inputs()}

    assert list(inputs("unet")) == ["sample", "timestep", "encoder_hidden_states"]
    assert inputs("unet")["sample"][0] == "batch" and inputs("unet")["sample"][2:] == ["height", "width"]
    assert list(inputs("text_encoder")) == ["input_ids"]
    assert list(inputs("vae_decoder")) == ["latent_sample"]
    assert list(inputs("vae_encoder")) == ["sample"]
    assert list(inputs("safety_checker")) == ["clip_input", "images"]


def test_diffusers_onnx_pipeline_loads_and_generates(exported):
    from diffusers import OnnxStableDiffusionPipeline

    pipe = OnnxStableDiffusionPipeline.from_pretrained(str(exported), provider="CPUExecutionProvider")
    # 72x56: latents 9x7, not a multiple of the UNet's down-sampling factor, so the graph must resize.
    images = pipe("a castle", num_inference_steps=2, width=72, height=56,
                  generator=np.random.RandomState(0)).images
    assert images[0].size == (72, 56)
    assert np.asarray(images[0]).std() > 0


@pytest.fixture(scope="module")
def pipelines(exported):
    """The PyTorch random:tiny pipeline and the adapter over its export, both without a safety checker."""
    from nitro_cli.models import build_random_pipeline
    from nitro_cli.onnx_export import OnnxRuntimePipeline, load_onnx_pipeline

    torch_pipe = build_random_pipeline("random:tiny")
    torch_pipe.safety_checker = None
    torch_pipe.set_progress_bar_config(disable=True)
    onnx_pipe = load_onnx_pipeline(exported, provider="CPUExecutionProvider", with_safety_checker=False)
    return torch_pipe, OnnxRuntimePipeline(onnx_pipe)


def two_images(pipe, steps=2, on_step_end=None):
    from nitro_cli.generation import PromptCache, run_batch

    return run_batch(pipe, PromptCache(pipe, enabled=False), ["castle", "dog"], ["", "blurry"], [5, 6],
                     steps=steps, guidance=7.5, width=64, height=64, on_step_end=on_step_end)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_onnx_images_match_pytorch_for_the_same_seed(pipelines, scheduler):
    from nitro_cli.builder import set_scheduler

    images = []
    for pipe in pipelines:
        set_scheduler(pipe, scheduler)
        images.append([np.asarray(image) for image in two_images(pipe).images])
    for torch_image, onnx_image in zip(*images):
        assert psnr(torch_image, onnx_image) >= 30
    assert psnr(images[1][0], images[1][1]) < 30  # the two seeds give different images: the check can fail


def test_onnx_euler_a_takes_its_step_noise_from_the_seeds(pipelines):
    """An ancestral scheduler adds noise at each step: drawn from the seeds' generators, not torch's global
    generator, or the same seed gives another image on each run."""
    import torch

    from nitro_cli.builder import set_scheduler

    onnx = pipelines[1]
    set_scheduler(onnx, "euler_a")
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append([np.asarray(image) for image in two_images(onnx, steps=3).images])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))

def test_onnx_step_callback_sees_and_replaces_the_latents(pipelines):
    import torch

    onnx = pipelines[1]
    seen = []

    def on_step_end(pipe, step, timestep, tensors):
        seen.append((step, pipe.num_timesteps, tuple(tensors["latents"].shape)))
        if step == pipe.num_timesteps - 1:  # the same final latents for both seeds: the same two images
            return {"latents": torch.zeros_like(tensors["latents"])}
        return tensors

    images = two_images(onnx, on_step_end=on_step_end).images
    assert seen == [(step, 2, (2, 4, 8, 8)) for step in range(2)]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_onnx_safety_checker_blacks_out_what_it_flags(pipelines):
    """The exported checker takes NHWC images; the adapter hands run_batch NCHW pixels and per-image flags."""
    import torch

    onnx = pipelines[1]

    calls = []

    def flag_first(clip_input, images):  # stands in for the ONNX session: flags its first call, zeroing the image
        assert images.shape == (1, 64, 64, 3) and clip_input.shape[0] == 1
        calls.append(images)
        flagged = len(calls) == 1
        return (np.zeros_like(images) if flagged else images), np.array([flagged])

    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    onnx.onnx_pipe.safety_checker = flag_first
    try:
        checked, flags = onnx.run_safety_checker(pixels, "cpu", torch.float32)
    finally:
        onnx.onnx_pipe.safety_checker = None
    assert flags == [True, False]
    assert not checked[0].any() and torch.equal(checked[1], pixels[1])


def test_backend_onnx_generates_end_to_end(runner, tmp_path, exported):
    import shutil

    from nitro_cli.paths import cache_dir

    # random: models are exported once into the cache; seeding it with the fixture's export saves seconds.
    shutil.copytree(exported, cache_dir() / "onnx" / "random-tiny")
    torch_dir, onnx_dir = tmp_path / "torch", tmp_path / "onnx"
    # The default preset's Euler a: diffusers' own ONNX loop fails on it, the adapter's torch loop runs it.
    common = ["generate", "castle", "--seed", "4", "-n", "2", "--batch-size", "2", *FAST]
    result = runner.invoke(app, [*common, "--out", str(onnx_dir), "--set", "backend=onnx", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["seed"] for r in records] == [4, 5]
    assert runner.invoke(app, [*common, "--out", str(torch_dir)]).exit_code == 0
    for record in records:
        name = record["path"].rsplit("/", 1)[-1]
        assert psnr(np.asarray(Image.open(torch_dir / name)), np.asarray(Image.open(record["path"]))) >= 30


def test_a_cached_export_missing_a_graph_is_exported_again(exported, monkeypatch):
    """The cached export of a random model counted as whole with its model_index.json alone: a graph deleted by
    hand failed every run, with a hint to run `nitro export onnx`, which never repairs the cache."""
    import shutil

    from nitro_cli import models, onnx_export
    from nitro_cli.paths import cache_dir

    folder = cache_dir() / "onnx" / "random-tiny"
    shutil.copytree(exported, folder)
    (folder / "unet" / "model.onnx").unlink()
    monkeypatch.setattr(onnx_export, "export_onnx", lambda spec, out: shutil.copytree(exported, out, dirs_exist_ok=True))
    assert onnx_export.exported_folder(models.resolve_model("random:tiny")) == folder
    assert (folder / "unet" / "model.onnx").is_file()


def test_a_cached_export_onnx_runtime_cannot_load_names_the_folder_to_delete(exported):
    """A graph cut short (a full disk, a copy stopped half way) can't be told from its name: the hint said to export
    it again with `nitro export onnx`, which leaves the cache as it is."""
    import shutil

    from nitro_cli import onnx_export
    from nitro_cli.errors import RuntimeFailure
    from nitro_cli.paths import cache_dir

    folder = cache_dir() / "onnx" / "random-tiny"
    shutil.copytree(exported, folder)
    (folder / "unet" / "model.onnx").write_bytes(b"cut short")
    with pytest.raises(RuntimeFailure, match="could not load") as error:
        onnx_export.load_onnx_pipeline(folder, provider="CPUExecutionProvider", with_safety_checker=False)
    assert error.value.hint == f"delete {folder}: the next run exports it again"


def test_a_full_disk_during_an_export_is_told_as_one(runner, tmp_path, monkeypatch):
    """It was "ONNX export of the text_encoder failed: OSError: [Errno 28] ..." with a hint to try another --opset."""
    import errno

    from nitro_cli import onnx_export

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "onnx" / "text_encoder" / "model.onnx"))

    monkeypatch.setattr(onnx_export, "_export_one", disk_full)
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr and "Hint: free disk space" in result.stderr
    assert "--opset" not in result.stderr


def test_processes_exporting_a_random_model_at_once_never_share_a_folder(exported, monkeypatch):
    """Under a launcher, every process of an ONNX run of random:tiny exports it into the cache at once: each
    writes its own staging folder, and all of them end with the one whole export."""
    import shutil

    from nitro_cli import models, onnx_export
    from nitro_cli.paths import cache_dir

    source = models.resolve_model("random:tiny")
    written = []

    def export_while_another_process_does(spec, out):
        written.append(out)
        if len(written) == 1:  # another process starts and finishes its export meanwhile
            onnx_export.exported_folder(source)
        shutil.copytree(exported, out, dirs_exist_ok=True)

    monkeypatch.setattr(onnx_export, "export_onnx", export_while_another_process_does)
    folder = onnx_export.exported_folder(source)
    assert folder == cache_dir() / "onnx" / "random-tiny" and onnx_export.is_onnx_folder(folder)
    assert len(written) == 2 and written[0] != written[1]
    assert [p.name for p in folder.parent.iterdir()] == ["random-tiny"]  # no staging folder left


def test_backend_onnx_rejects_what_it_cannot_run(runner, tmp_path, tiny_model_dir, exported):
    not_exported = runner.invoke(app, ["generate", "castle", "--set", "backend=onnx",
                                       "--out", str(tmp_path), *FAST, "--model", str(tiny_model_dir)])
    assert not_exported.exit_code == 2 and "nitro export onnx --model" in not_exported.output
    on_pytorch = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST, "--model", str(exported)])
    assert on_pytorch.exit_code == 2 and "backend=onnx" in on_pytorch.output
    assert not list(tmp_path.glob("*.png"))


def test_the_run_it_line_pastes_into_a_shell_whatever_the_folder_is_called(runner, tmp_path):
    """`Run it: ... --model sp out/x y ...` split the folder in two when pasted; rich also read `[v1]` as markup."""
    import shlex

    out = tmp_path / "my exports" / "tiny [v1]"
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Run it: ")]
    words = shlex.split(line.removeprefix("Run it: "))
    assert words[words.index("--model") + 1] == str(out) and words[-2:] == ["--set", "backend=onnx"]


def test_export_refuses_a_folder_with_other_files(runner, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_out_that_is_a_file_is_a_usage_error(runner, tmp_path):
    not_a_folder = tmp_path / "taken"
    not_a_folder.write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(not_a_folder)])
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in result.stderr


def test_export_out_that_cannot_be_created_is_a_usage_error_before_loading(runner, tmp_path, monkeypatch):
    from nitro_cli import models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(tmp_path / "taken" / "sub")])
    assert result.exit_code == 2, result.output
    assert "Error: --out" in result.stderr and "opset" not in result.stderr


def test_an_opset_below_14_is_a_usage_error_before_loading(runner, tmp_path, monkeypatch):
    from nitro_cli import models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model before checking --opset"))
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out), "--opset", "13"])
    assert result.exit_code == 2 and "--opset" in result.stderr and not out.exists()


@pytest.mark.parametrize("opset", ["24", str(10**20)])
def test_an_opset_torch_cannot_export_is_a_usage_error_before_loading(runner, tmp_path, monkeypatch, opset):
    """torch 2.13 exports up to opset 23: --opset 24 failed after the model loaded, as exit 1 with the traced graph."""
    from nitro_cli import models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model before checking --opset"))
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out), "--opset", opset])
    assert result.exit_code == 2, result.output
    assert f"Error: --opset {opset}: torch" in result.stderr and "graph" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # Error: and Hint:
    assert not out.exists()


def test_a_model_that_fails_to_load_leaves_no_empty_folders(runner, tmp_path, tiny_model_dir):
    """`--out new/a/b` was made before the model loaded, and stayed, empty, after it failed to."""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged, ignore=shutil.ignore_patterns("*.safetensors"))
    result = runner.invoke(app, ["export", "onnx", "--model", str(damaged), "--out", str(tmp_path / "new" / "a" / "b")])
    assert result.exit_code == 1 and "has no weights file" in result.stderr, result.output
    assert not (tmp_path / "new").exists()


def test_a_failed_export_keeps_torchs_graph_log_off_stdout(runner, tmp_path, capfd):
    """torch's exporter logged the traced graph from C++ to the process's stdout, which scripts read the
    exported folder from (CliRunner can't see it; the file descriptor can)."""
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(tmp_path / "x"),
                                 "--opset", "24"])
    assert result.exit_code == 2, result.output
    assert "Torch IR graph" not in capfd.readouterr().out


def test_an_export_at_an_opset_onnxruntime_cannot_run_fails_naming_the_component(runner, tmp_path, monkeypatch):
    """--opset 22 exported a VAE encoder whose RandomNormalLike(22) onnxruntime 1.32 has no kernel for: the export
    exited 0 and the first generate failed, with a hint to export again the same way."""
    import onnxruntime

    made = []
    real = onnxruntime.InferenceSession

    def session(path, *args, **kwargs):
        made.append(Path(path).parent.name)
        if made[-1] == "vae_encoder":
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                               "RandomNormalLike(22) node with name '/RandomNormalLike'")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out), "--opset", "18"])
    assert result.exit_code == 1, result.output
    assert "can't run the vae_encoder exported at --opset 18: [ONNXRuntimeError]" in result.stderr
    assert "Hint: leave --opset out for 17" in result.stderr and not result.stdout
    assert "vae_encoder" in made and (out / ".nitro-export-partial").exists()  # not taken for a whole export


def fail_at_unet(monkeypatch, error: BaseException) -> None:
    """`error` raised while the UNet is being exported, after the text encoder was written."""
    from nitro_cli import onnx_export

    real = onnx_export._export_one

    def export_one(module, example, inputs, outputs, axes, folder, opset):
        if folder.name == "unet":
            raise error
        return real(module, example, inputs, outputs, axes, folder, opset)

    monkeypatch.setattr(onnx_export, "_export_one", export_one)


def interrupt_at_unet(monkeypatch):
    """Ctrl-C while the UNet is being exported."""
    fail_at_unet(monkeypatch, KeyboardInterrupt())


def test_an_interrupted_export_is_finished_by_running_it_again(runner, tmp_path, monkeypatch):
    """A Ctrl-C'd export left a half folder that the rerun refused as 'not empty and not an ONNX export'."""
    out = tmp_path / "onnx"
    with monkeypatch.context() as patch:
        interrupt_at_unet(patch)
        interrupted = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert interrupted.exit_code == 130, interrupted.output
    again = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "unet" / "model.onnx").is_file() and not list(out.glob(".nitro*"))


def test_an_interrupted_re_export_is_not_taken_for_a_whole_one(runner, tmp_path, monkeypatch, exported):
    """Re-exporting over an earlier export and stopping half way kept the old model_index.json: the folder of
    new and old graphs loaded and generated as if whole."""
    import shutil

    from nitro_cli.onnx_export import is_onnx_folder

    out = tmp_path / "onnx"
    shutil.copytree(exported, out)
    interrupt_at_unet(monkeypatch)
    interrupted = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert interrupted.exit_code == 130, interrupted.output
    assert not is_onnx_folder(out)
    result = runner.invoke(app, ["generate", "castle", *FAST, "--model", str(out), "--set", "backend=onnx",
                                 "--out", str(tmp_path / "images")])
    assert result.exit_code == 2 and "unfinished ONNX export" in result.stderr, result.output
    assert not (tmp_path / "images").exists() or not list((tmp_path / "images").glob("*.png"))


def test_a_re_export_whose_model_fails_to_load_leaves_the_earlier_export_whole(runner, tmp_path, monkeypatch,
                                                                              exported):
    """The folder was marked half-exported before the model loaded: a model that failed to load (or Ctrl-C during
    the load) left the earlier, whole export unusable though not one graph of it had been replaced."""
    import shutil

    from nitro_cli import models
    from nitro_cli.errors import RuntimeFailure
    from nitro_cli.onnx_export import is_onnx_folder

    out = tmp_path / "onnx"
    shutil.copytree(exported, out)

    def load_fails(*args, **kwargs):
        raise RuntimeFailure("could not load the model")

    monkeypatch.setattr(models, "load_pipeline", load_fails)
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert result.exit_code == 1 and "could not load the model" in result.stderr, result.output
    assert is_onnx_folder(out)


@pytest.mark.parametrize("part", ["tokenizer", "unet"])
def test_an_export_with_a_missing_file_is_a_one_line_error(runner, tmp_path, exported, part):
    """An empty tokenizer folder loaded without a word and failed at the first prompt with a traceback."""
    import shutil

    out = tmp_path / "onnx"
    shutil.copytree(exported, out)
    shutil.rmtree(out / part)
    (out / part).mkdir()
    result = runner.invoke(app, ["generate", "castle", *FAST, "--model", str(out), "--set", "backend=onnx",
                                 "--out", str(tmp_path / "images")])
    assert result.exit_code == 1, result.output
    assert f"is incomplete: no {part}/" in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.glob("images/*.png"))


def test_a_cache_that_cannot_be_written_is_named_with_its_variable(runner, tmp_path, monkeypatch):
    """`random:` models are exported once into nitro's cache; an unwritable cache (a read-only home, a mistyped
    NITRO_CACHE_DIR) read as a bad `--out` the user never gave, with a hint to change it."""
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    monkeypatch.setenv("NITRO_CACHE_DIR", str(not_a_folder))
    result = runner.invoke(app, ["generate", "castle", *FAST, "--set", "backend=onnx", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"Error: nitro's cache folder {not_a_folder / 'onnx'} can't be written" in result.stderr
    assert "Hint: set NITRO_CACHE_DIR" in result.stderr and "--out" not in result.stderr


def test_every_preset_field_is_sorted_for_the_onnx_backend():
    """A field the ONNX backend can't apply must be in PYTORCH_ONLY_FIELDS, or `backend: onnx` ignores it
    without a warning: a new field has to be sorted here on purpose."""
    from nitro_cli.builder import PYTORCH_ONLY_FIELDS
    from nitro_cli.presets import Preset, flatten

    descriptive = {"tier", "scenario", "claimed"}
    applied_by_onnx = {"backend", "scheduler", "safety_checker", "prompt_cache", "steps", "guidance", "width",
                       "height", "batch_size"}
    assert set(flatten(Preset())) == descriptive | applied_by_onnx | set(PYTORCH_ONLY_FIELDS)
    assert not (descriptive | applied_by_onnx) & set(PYTORCH_ONLY_FIELDS)


ONNX_COMMANDS = [["export", "onnx", "--model", "random:tiny"], ["generate", "castle", *FAST, "--set", "backend=onnx"]]


@pytest.mark.parametrize("command", ONNX_COMMANDS)
def test_the_onnx_backend_without_its_packages_is_a_usage_error_naming_the_extra(runner, tmp_path, monkeypatch,
                                                                                  command):
    from nitro_cli import hardware, models

    monkeypatch.setattr(hardware, "is_importable", lambda name: name != "onnxruntime")
    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model without onnxruntime"))
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Error: the ONNX backend needs onnxruntime, which is not installed" in result.stderr
    assert "Hint: pip install 'nitro-cli[onnx]'" in result.stderr
    assert not list(tmp_path.glob("out/*"))


@pytest.mark.parametrize("command", ONNX_COMMANDS)
@pytest.mark.parametrize("version", ["0.43.0", "0.43.0.dev0", "1.0.1"])
def test_the_onnx_backend_on_a_diffusers_without_its_onnx_pipeline_is_a_usage_error(runner, tmp_path, monkeypatch,
                                                                                     command, version):
    """diffusers 0.43 refuses to make an OnnxRuntimeModel: said before the export's minutes, not in a traceback
    after them."""
    from nitro_cli import hardware, models

    installed = hardware.package_version
    monkeypatch.setattr(hardware, "package_version", lambda name: version if name == "diffusers" else installed(name))
    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for a doomed export"))
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert (f"Error: the ONNX backend needs diffusers older than 0.43, and {version} is installed"
            in result.stderr)
    assert "Hint: pip install 'nitro-cli[onnx]', which installs diffusers 0.42" in result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("out/*"))


def test_exporting_an_onnx_export_again_is_a_usage_error_before_loading(runner, tmp_path, monkeypatch, exported):
    from nitro_cli import models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("loaded an ONNX export as a model"))
    result = runner.invoke(app, ["export", "onnx", "--model", str(exported), "--out", str(tmp_path / "again")])
    assert result.exit_code == 2, result.output
    assert f"Error: {exported} is already an ONNX export" in result.stderr
    assert f"--model {exported} --set backend=onnx" in result.stderr
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("over_an_export", [False, True])
def test_a_model_without_a_safety_checker_exports_and_runs_without_one(runner, tmp_path, over_an_export):
    """The export says the checker was not exported, and a preset that asks for it is warned instead of failing.
    Over an earlier export, that export's checker (1.2 GB for SD 1.x) stayed behind."""
    from nitro_cli.models import build_random_pipeline

    model, out = tmp_path / "no-checker", tmp_path / "onnx"
    if over_an_export:
        assert runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)]).exit_code == 0
        assert (out / "safety_checker").is_dir()
    pipe = build_random_pipeline("random:tiny")
    pipe.register_modules(safety_checker=None)
    pipe.save_pretrained(model)
    exported = runner.invoke(app, ["export", "onnx", "--model", str(model), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "not exported: the model has none" in exported.stderr
    assert not (out / "safety_checker").exists()
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    result = runner.invoke(app, ["generate", "castle", *FAST, "--model", str(out), "--set", "backend=onnx",
                                 "--preset", "beginner", "--out", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    assert f"Warning: safety checker skipped: the export in {out} has none" in result.stderr
    assert len(list((tmp_path / "images").glob("*.png"))) == 1


def test_backend_onnx_warns_of_each_setting_only_pytorch_applies(exported):
    """An ONNX export is a fixed float32 graph: a preset's PyTorch-only settings are skipped with a warning, not
    silently, and the defaults say nothing."""
    from nitro_cli import models
    from nitro_cli.builder import _build_onnx
    from nitro_cli.presets import load_preset

    source = models.resolve_model(str(exported))
    tuned = load_preset("baseline", ["backend=onnx", "precision=float16", "vae.tiling=true",
                                     "safety_checker=false"]).settings
    built = _build_onnx(tuned, source, "cpu")
    assert [what for what, _ in built.skipped] == ["precision=float16", "vae.tiling=True"]
    assert all("PyTorch backend only" in why for _, why in built.skipped)
    plain = load_preset("baseline", ["backend=onnx", "safety_checker=false"]).settings
    assert _build_onnx(plain, source, "cpu").skipped == []


@pytest.mark.parametrize("cuda_in_onnxruntime", [True, False])
def test_backend_onnx_on_cuda_takes_onnxruntimes_cuda_provider_or_says_it_has_none(exported, monkeypatch,
                                                                                    cuda_in_onnxruntime):
    import onnxruntime

    from nitro_cli import models, onnx_export
    from nitro_cli.builder import _build_onnx
    from nitro_cli.presets import load_preset

    providers = ["CUDAExecutionProvider"] * cuda_in_onnxruntime + ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    asked, load = [], onnx_export.load_onnx_pipeline

    def load_on_the_cpu(folder, *, provider, with_safety_checker):  # this machine has no GPU to load onto
        asked.append(provider)
        return load(folder, provider="CPUExecutionProvider", with_safety_checker=with_safety_checker)

    monkeypatch.setattr(onnx_export, "load_onnx_pipeline", load_on_the_cpu)
    settings = load_preset("baseline", ["backend=onnx", "safety_checker=false"]).settings
    built = _build_onnx(settings, models.resolve_model(str(exported)), "cuda")
    assert asked == [providers[0]]
    assert built.device == ("cuda" if cuda_in_onnxruntime else "cpu")
    assert [what for what, _ in built.skipped] == ([] if cuda_in_onnxruntime else ["CUDA"])


@pytest.mark.parametrize("checker", ["true", "false"])
def test_an_export_without_its_safety_checker_graph_runs_only_with_the_checker_off(runner, tmp_path, exported,
                                                                                    checker):
    import shutil

    out = tmp_path / "onnx"
    shutil.copytree(exported, out)
    shutil.rmtree(out / "safety_checker")
    result = runner.invoke(app, ["generate", "castle", *FAST, "--model", str(out), "--set", "backend=onnx",
                                 "--set", f"safety_checker={checker}", "--out", str(tmp_path / "images")])
    if checker == "true":
        assert result.exit_code == 1 and "is incomplete: no safety_checker/model.onnx" in result.stderr, result.output
    else:
        assert result.exit_code == 0, result.output
        assert len(list((tmp_path / "images").glob("*.png"))) == 1


def test_an_export_onnx_runtime_cannot_load_is_a_one_line_error(runner, tmp_path, exported):
    import shutil

    out = tmp_path / "onnx"
    shutil.copytree(exported, out)
    (out / "unet" / "model.onnx").write_bytes(b"not a graph")
    result = runner.invoke(app, ["generate", "castle", *FAST, "--model", str(out), "--set", "backend=onnx",
                                 "--out", str(tmp_path / "images")])
    assert result.exit_code == 1, result.output
    assert f"Error: ONNX Runtime could not load {out}" in result.stderr and "Traceback" not in result.output
    assert "Hint: export it again" in result.stderr


@pytest.mark.parametrize("content", [b"\xff{ not json", b"[]"], ids=["not-utf8", "not-an-object"])
def test_a_folder_with_an_unreadable_model_index_is_not_an_onnx_export(tmp_path, content):
    """A model_index.json holding a JSON list crashed the check (AttributeError) before the model was even loaded."""
    from nitro_cli.onnx_export import is_onnx_folder

    (tmp_path / "model_index.json").write_bytes(content)
    assert not is_onnx_folder(tmp_path)


@pytest.mark.parametrize("error, named", [
    (RuntimeError("Unsupported: ONNX export of operator foo\ngraph(%sample : Float(...)) ..."),
     "RuntimeError: Unsupported: ONNX export of operator foo\n"),
    (AssertionError(), "AssertionError\n"),  # no message: the type once, not "AssertionError: AssertionError"
], ids=["message", "no-message"])
def test_a_component_the_exporter_fails_on_is_named_in_one_line(runner, tmp_path, monkeypatch, error, named):
    from nitro_cli import onnx_export

    fail_at_unet(monkeypatch, error)
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"Error: ONNX export of the unet failed: {named}" in result.stderr
    assert "graph(" not in result.output and "Traceback" not in result.output
    assert onnx_export.is_partial_export(out) and not onnx_export.is_onnx_folder(out)


def test_a_re_export_replaces_a_components_earlier_files(tmp_path):
    """A re-export kept an earlier export's weights.pb in a component's folder: counted in the reported size, and
    for a component over 2 GB (SD 1.x's UNet) onnx appended the new weights to it, doubling the file."""
    import torch

    from nitro_cli.onnx_export import DEFAULT_OPSET, _export_one

    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "weights.pb").write_bytes(b"\0" * 4096)  # an earlier export of a model over 2 GB
    size = _export_one(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), ["x"], ["y"], {}, folder, DEFAULT_OPSET)
    assert [f.name for f in folder.iterdir()] == ["model.onnx"]
    assert size == (folder / "model.onnx").stat().st_size
