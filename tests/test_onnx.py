"""ONNX for CPU/edge: `nitro export onnx` writes a folder diffusers' ONNX pipeline loads, whose images
match PyTorch's, and `backend: onnx` runs it through `nitro generate`."""

import json

import numpy as np
import pytest
from PIL import Image

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


@pytest.mark.parametrize("scheduler", ["pndm", "dpmpp_2m"])
def test_onnx_images_match_pytorch_for_the_same_seed(exported, scheduler):
    from nitro_cli.builder import set_scheduler
    from nitro_cli.generation import PromptCache, run_batch
    from nitro_cli.models import build_random_pipeline
    from nitro_cli.onnx_export import OnnxRuntimePipeline, load_onnx_pipeline

    torch_pipe = build_random_pipeline("random:tiny")
    onnx_pipe = load_onnx_pipeline(exported, provider="CPUExecutionProvider", with_safety_checker=False)
    torch_pipe.safety_checker = None
    images = []
    for pipe in (torch_pipe, onnx_pipe):
        set_scheduler(pipe, scheduler)
        runner = pipe if pipe is torch_pipe else OnnxRuntimePipeline(pipe)
        result = run_batch(runner, PromptCache(runner, "cpu", enabled=False), ["castle", "dog"], ["", "blurry"],
                           [5, 6], steps=4, guidance=7.5, width=64, height=64)
        images.append([np.asarray(image) for image in result.images])
    for torch_image, onnx_image in zip(*images):
        assert psnr(torch_image, onnx_image) >= 30
    assert psnr(images[1][0], images[1][1]) < 30  # the two seeds give different images: the check can fail


def test_backend_onnx_generates_end_to_end(runner, tmp_path, exported):
    import shutil

    from nitro_cli.paths import cache_dir

    # random: models are exported once into the cache; seeding it with the fixture's export saves seconds.
    shutil.copytree(exported, cache_dir() / "onnx" / "random-tiny")
    torch_dir, onnx_dir = tmp_path / "torch", tmp_path / "onnx"
    common = ["generate", "castle", "--seed", "4", "-n", "2", "--batch-size", "2", "--set", "scheduler=dpmpp_2m", *FAST]
    result = runner.invoke(app, [*common, "--out", str(onnx_dir), "--set", "backend=onnx", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["seed"] for r in records] == [4, 5]
    assert runner.invoke(app, [*common, "--out", str(torch_dir)]).exit_code == 0
    for record in records:
        name = record["path"].rsplit("/", 1)[-1]
        assert psnr(np.asarray(Image.open(torch_dir / name)), np.asarray(Image.open(record["path"]))) >= 30


def test_backend_onnx_rejects_what_it_cannot_run(runner, tmp_path, tiny_model_dir, exported):
    euler = runner.invoke(app, ["generate", "castle", "--set", "backend=onnx", "--set", "scheduler=euler_a",
                                "--out", str(tmp_path), *FAST])
    assert euler.exit_code == 2 and "does not run on the ONNX backend" in euler.output
    not_exported = runner.invoke(app, ["generate", "castle", "--set", "backend=onnx", "--set", "scheduler=pndm",
                                       "--out", str(tmp_path), *FAST, "--model", str(tiny_model_dir)])
    assert not_exported.exit_code == 2 and "nitro export onnx --model" in not_exported.output
    on_pytorch = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST, "--model", str(exported)])
    assert on_pytorch.exit_code == 2 and "backend=onnx" in on_pytorch.output
    assert not list(tmp_path.glob("*.png"))


def test_export_refuses_a_folder_with_other_files(runner, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["export", "onnx", "--model", "random:tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
