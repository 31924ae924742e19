"""Deploy throughput: the writer thread, fixed batch shape for compiled pipelines, several processes."""

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nitro_cli import generation, output
from nitro_cli.cli import app
from nitro_cli.generation import PlannedImage, RunObserver, generate_images, plan_images
from nitro_cli.prompts import PromptJob
from tests.conftest import FAST, assert_same_but_for_batch_rounding

REPO = Path(__file__).resolve().parent.parent


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def tiny_pipe():
    from nitro_cli.models import build_random_pipeline

    pipe = build_random_pipeline("random:tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_prompt_cache_keeps_only_the_most_recently_used_prompts(tiny_pipe):
    """A prompts file of thousands of distinct lines must not fill memory with embeddings: the cache is
    bounded, and what it drops is the prompt used longest ago (a repeated prompt stays)."""
    cache = generation.PromptCache(tiny_pipe, enabled=True, size=2)
    first_castle = cache.embeddings("castle", "", 7.5)
    for prompt in ("dragon", "castle", "cat", "castle", "dragon", "cat"):
        cache.embeddings(prompt, "", 7.5)
    # castle stays while it is used; dragon, then cat, then castle make way for newer prompts.
    assert (cache.stats().encodes, cache.stats().hits) == (5, 2)
    assert cache.embeddings("cat", "", 7.5) is cache.embeddings("cat", "", 7.5)
    assert cache.embeddings("castle", "", 7.5) is not first_castle  # dropped by dragon and cat, encoded again


def test_cached_embeddings_hold_no_autograd_graph(tiny_pipe):
    """encode_prompt ran with autograd on: every cached embedding kept the text encoder's saved activations alive
    (on random:tiny, 256 prompts added 190 MiB of RSS; for SD 1.x about 27 MiB per encode in fp16)."""
    cache = generation.PromptCache(tiny_pipe, enabled=True)
    prompt_embeds, negative_embeds = cache.embeddings("castle", "blurry", 7.5)
    assert prompt_embeds.grad_fn is None and negative_embeds.grad_fn is None
    assert not prompt_embeds.requires_grad


def test_the_prompt_cache_tells_negative_prompts_apart(tiny_pipe):
    """Two lines of one prompt with different negative prompts: each image gets its own negative."""
    import torch

    cache = generation.PromptCache(tiny_pipe, enabled=True)
    _, blurry = cache.embeddings("castle", "blurry", 7.5)
    _, dark = cache.embeddings("castle", "dark", 7.5)
    assert cache.stats().encodes == 2 and not torch.equal(blurry, dark)


def test_a_batch_reads_the_pipelines_device_once_whatever_its_size(tiny_pipe, monkeypatch):
    """diffusers' `_execution_device` looks for offload hooks on every module of the pipeline (milliseconds of
    host time, while the GPU waits): a batch of 8 distinct prompts must not pay for it per prompt and per seed.
    The one read left is the pipeline call's own."""
    from diffusers import DiffusionPipeline

    cache = generation.PromptCache(tiny_pipe, enabled=True)
    reads = []
    device_of = DiffusionPipeline._execution_device.fget
    monkeypatch.setattr(DiffusionPipeline, "_execution_device",
                        property(lambda pipe: reads.append(1) or device_of(pipe)))
    result = generation.run_batch(tiny_pipe, cache, [f"castle {i}" for i in range(8)], [""] * 8, list(range(8)),
                                  steps=1, guidance=7.5, width=64, height=64)
    assert len(result.images) == 8 and cache.stats().encodes == 8
    assert len(reads) <= 1


def tiny_plan(prompts: list[str]) -> list[PlannedImage]:
    jobs = [PromptJob(prompt=p, negative="", seed=None, steps=2, guidance=7.5, width=64, height=64) for p in prompts]
    return plan_images(jobs, 1, first_index=0, first_seed=10)


def test_a_filled_last_batch_keeps_every_call_at_batch_size_and_changes_no_pixels(tiny_pipe, monkeypatch):
    calls: list[list[int]] = []
    real_run_batch = generation.run_batch

    def recording_run_batch(pipe, cache, prompts, negatives, seeds, **kwargs):
        calls.append(list(seeds))
        return real_run_batch(pipe, cache, prompts, negatives, seeds, **kwargs)

    monkeypatch.setattr(generation, "run_batch", recording_run_batch)
    images = tiny_plan(["castle", "dragon", "cat"])
    made = {}
    for fixed in (True, False):
        calls.clear()
        cache = generation.PromptCache(tiny_pipe, enabled=True)
        saved = {}
        results = generate_images(tiny_pipe, cache, "cpu", images, batch_size=2,
                                  save=lambda planned, image: saved.setdefault(planned.name, np.asarray(image)),
                                  observer=RunObserver(), fixed_batch_shape=fixed)
        # The last batch (cat alone) is filled with a copy of cat (seed 12) only when the shape is fixed.
        assert calls == ([[10, 11], [12, 12]] if fixed else [[10, 11], [12]])
        assert [r.planned.name for r in results] == [i.name for i in images]
        assert [r.batch_size for r in results] == [2, 2, 1]
        # The copy of cat is no prompt of the run: three encodes, and no reuse to report.
        assert (cache.stats().encodes, cache.stats().hits) == (3, 0)
        made[fixed] = saved
    assert list(made[True]) == list(made[False]) == [i.name for i in images]
    # The filling is invisible: cat made beside its copy is bit for bit cat made beside another image.
    beside_another = real_run_batch(tiny_pipe, cache, ["castle", "cat"], ["", ""], [10, 12], steps=2, guidance=7.5,
                                    width=64, height=64).images[1]
    assert np.array_equal(made[True][images[2].name], np.asarray(beside_another))
    # Against cat alone (unfilled) only the CPU kernels' batch-size rounding remains.
    for name in made[True]:
        assert_same_but_for_batch_rounding(made[True][name], made[False][name], name)


def test_every_image_handed_to_the_writer_is_saved_before_an_interrupt_ends_the_run(tiny_pipe):
    saved, batches_started = [], []
    writer_threads = set()

    def slow_save(planned, image):
        writer_threads.add(threading.current_thread().name)
        time.sleep(0.2)  # a slow disk: the first batch is still being written when Ctrl-C comes
        saved.append(planned.name)
        return Path(planned.name)

    class InterruptSecondBatch(RunObserver):
        def batch_started(self, batch):
            batches_started.append(batch)
            if len(batches_started) == 2:
                raise KeyboardInterrupt

    images = tiny_plan(["castle", "dragon", "cat"])
    with pytest.raises(KeyboardInterrupt):
        generate_images(tiny_pipe, generation.PromptCache(tiny_pipe, enabled=True), "cpu", images,
                        batch_size=2, save=slow_save, observer=InterruptSecondBatch())
    assert saved == [images[0].name, images[1].name]
    assert writer_threads == {"nitro-image-writer"}  # saving ran off the denoising thread


def test_a_failure_in_the_writer_is_raised_in_the_calling_thread(tiny_pipe):
    def broken_save(planned, image):
        raise ValueError("encoder exploded")

    with pytest.raises(ValueError, match="encoder exploded"):
        generate_images(tiny_pipe, generation.PromptCache(tiny_pipe, enabled=True), "cpu",
                        tiny_plan(["castle", "dragon", "cat"]), batch_size=1, save=broken_save, observer=RunObserver())


def test_a_full_disk_is_an_error_with_a_hint_not_a_traceback(runner, tmp_path, monkeypatch):
    def disk_full(image, path, parameters):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "save_png", disk_full)
    result = runner.invoke(app, ["generate", "castle", "-n", "3", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "Error: could not write 00000-" in result.stderr and "No space left on device" in result.stderr
    assert "Hint: check free disk space" in result.stderr and "Traceback" not in result.stderr


def test_json_lines_follow_prompt_order_with_the_writer(runner, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("castle\n--prompt dragon --steps 3\ncat\n", encoding="utf-8")
    result = runner.invoke(app, ["generate", "-f", str(prompts), "-n", "2", "--batch-size", "3", "--json",
                                 "--seed", "0", "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    names = [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()]
    # Batches go castle+cat (2 steps) first, then dragon (3 steps); lines come in batch order, as saved.
    assert names == ["00000-0-castle.png", "00001-1-castle.png", "00004-4-cat.png", "00005-5-cat.png",
                     "00002-2-dragon.png", "00003-3-dragon.png"]
    assert sorted(names) == pngs(tmp_path / "out")


@pytest.mark.parametrize(("preset", "fixed"), [("deploy", True), ("beginner", False)])
def test_a_compiling_preset_asks_for_a_fixed_batch_shape(runner, tmp_path, monkeypatch, preset, fixed):
    asked = {}

    def record(*args, **kwargs):
        asked.update(kwargs)
        return []

    monkeypatch.setattr(generation, "generate_images", record)
    result = runner.invoke(app, ["generate", "castle", "--preset", preset, "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert asked["fixed_batch_shape"] is fixed


def torchrun(args: list[str], env: dict, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m nitro_cli ARGS`, as a user starts it on one machine."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), "-m", "nitro_cli", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_two_processes_make_the_files_and_pixels_of_one(tmp_path):
    """torchrun, two CPU processes joined by accelerate over gloo, against one in-process run. No --seed:
    the main process draws it and the other must receive it. About 20 s here (three interpreters importing torch)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("castle\n--prompt dog --seed 40\ncat\n", encoding="utf-8")
    common = ["generate", "-f", str(prompts), "-n", "2", "--batch-size", "2", "--json", *FAST]
    two, one = tmp_path / "two", tmp_path / "one"
    # The same thread count for both runs (torchrun's default): CPU kernels round by thread count.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NITRO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    launched = torchrun([*common, "--out", str(two)], env)
    assert launched.returncode == 0, launched.stderr
    manifest = json.loads((two / output.MANIFEST_NAME).read_text(encoding="utf-8"))

    single = subprocess.run([sys.executable, "-m", "nitro_cli", *common, "--seed", str(manifest["first_seed"]),
                             "--out", str(one)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr
    assert pngs(two) == pngs(one) and len(pngs(one)) == 6
    for name in pngs(one):
        assert np.array_equal(pixels(two / name), pixels(one / name)), name
        assert Image.open(two / name).text["parameters"] == Image.open(one / name).text["parameters"]
    # Every image reported once on stdout, whichever process made it; one summary, from the main process.
    reported = sorted(Path(json.loads(line)["path"]).name for line in launched.stdout.splitlines())
    assert reported == pngs(two)
    assert len(re.findall(r"Prompt encoding:", launched.stderr)) == 1
    assert "Processes: 2, images made by each: 4, 2." in launched.stderr
    assert "Processes:" not in single.stderr


def test_a_bad_request_is_told_once_by_the_main_process(tmp_path):
    """Every process finds a bad prompts line; before, each printed it (or the launcher, stopping the others
    after the first failed, cut the main process off with "Interrupted.")."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("castle\n--bogus 1\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NITRO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    launched = torchrun(["generate", "-f", str(prompts), *FAST, "--out", str(tmp_path / "out")], env, processes=3)
    assert launched.returncode != 0 and launched.stdout == ""
    assert launched.stderr.count("Error: prompts file") == 1 and launched.stderr.count("line 2: unknown option") == 1
    assert "Interrupted." not in launched.stderr and "exitcode  : 2" in launched.stderr
    assert not (tmp_path / "out").exists()


def test_under_a_launcher_the_run_is_recorded_after_every_load_and_before_any_image(runner, tmp_path, monkeypatch):
    """A model that fails to load on any process stops them all (`on_every`, each failure told once), and the
    main process writes the run record while the others wait (`from_main`) before any of them saves an image:
    an interrupted run is always the one --resume finds. The processes are stood in for by one that logs."""
    from nitro_cli import builder, distributed

    events = []

    class LoggedProcesses(distributed.Processes):
        def on_every(self, work):
            events.append("every process: start")
            value = work()
            events.append("every process: end")
            return value

        def from_main(self, decide):
            events.append("main: start")
            value = decide()
            events.append("main: end")
            return value

    def logged(name, function):
        return lambda *args, **kwargs: events.append(name) or function(*args, **kwargs)

    monkeypatch.setattr(distributed, "launched", lambda: True)
    monkeypatch.setattr(distributed, "processes", lambda cpu: LoggedProcesses())
    monkeypatch.setattr(builder, "build_pipeline", logged("load", builder.build_pipeline))
    monkeypatch.setattr(output, "record_run", logged("record", output.record_run))
    monkeypatch.setattr(output, "save_image", logged("save", output.save_image))
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert events == ["every process: start", "every process: end",  # the request checked
                      "main: start", "main: end",  # the images planned
                      "every process: start", "load", "every process: end",
                      "main: start", "record", "main: end",
                      "save", "save"]


def test_prompts_from_standard_input_under_a_launcher_is_a_usage_error(runner, tmp_path, monkeypatch):
    """Standard input reaches one process of the run only: the others would wait on an empty one."""
    from nitro_cli import distributed

    monkeypatch.setattr(distributed, "launched", lambda: True)
    monkeypatch.setattr(distributed, "processes", lambda cpu: distributed.Processes())
    result = runner.invoke(app, ["generate", "-f", "-", *FAST, "--out", str(tmp_path / "out")], input="castle\n")
    assert result.exit_code == 2, result.output
    assert "Error: --prompts-file - (standard input) reaches only one of the processes" in result.stderr
    assert not (tmp_path / "out").exists()

def test_world_size_without_a_launcher_is_a_usage_error(runner, tmp_path, monkeypatch):
    """WORLD_SIZE left over in a shell or job script: an Error line and exit 2, not accelerate's traceback."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["generate", "castle", *FAST, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Error: WORLD_SIZE=2 says this is one of several processes" in result.stderr
    assert "unset WORLD_SIZE" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["generate", "checklist"])
def test_a_world_size_that_is_not_a_number_is_a_usage_error(runner, tmp_path, monkeypatch, command):
    """An empty WORLD_SIZE (`export WORLD_SIZE=$N` with N unset) stopped every command with int()'s traceback."""
    monkeypatch.setenv("WORLD_SIZE", "")
    args = ["generate", "castle", *FAST, "--out", str(tmp_path / "out")] if command == "generate" else [command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Error: WORLD_SIZE='' is not a number of processes" in result.stderr
    assert "Hint: unset WORLD_SIZE" in result.stderr and not isinstance(result.exception, ValueError)


def test_a_process_that_lost_the_others_says_so_without_a_traceback(monkeypatch):
    """When another process fails, gloo raises "Connection closed by peer" (a RuntimeError) in the collective
    this one waits in: that is a run-time failure pointing at the other's error, not a second traceback."""
    import accelerate.utils

    from nitro_cli import distributed
    from nitro_cli.errors import RuntimeFailure

    def closed(*args, **kwargs):
        raise RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:32152")

    monkeypatch.setattr(accelerate.utils, "gather_object", closed)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", closed)
    processes = object.__new__(distributed._PartialStateProcesses)  # joined to nobody: the collectives are fakes
    processes.index, processes.count = 0, 2
    for step in (lambda: processes.gather(1), lambda: processes.from_main(lambda: 1)):
        with pytest.raises(RuntimeFailure, match="lost touch with another process") as failure:
            step()
        assert "--resume" in failure.value.hint


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_device_error_found_before_the_processes_join_is_told_by_each(runner, tmp_path, monkeypatch, rank):
    """--device cuda on a machine without a GPU fails before the processes join. It was told by rank 0 alone, and
    lost when rank 1 exited first: the launcher then stopped rank 0 before it had said it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    args = [a for a in FAST if a not in ("--device", "cpu")]
    result = runner.invoke(app, ["generate", "castle", *args, "--device", "cuda", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Error: --device cuda, but no CUDA GPU" in result.stderr, result.stderr


@pytest.mark.parametrize("rank, told", [("0", True), ("1", False)])
def test_a_stopped_run_is_told_interrupted_by_the_main_process(monkeypatch, capsys, rank, told):
    """Ctrl-C reaches every process of a launched run; each says what it saved, the main one alone that the
    run was interrupted. Every one exits 130."""
    import typer

    from nitro_cli.cli import guarded

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)

    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as exit_info:
        guarded(stopped)()
    assert exit_info.value.exit_code == 130
    assert ("Interrupted." in capsys.readouterr().err) == told


def test_a_process_that_cannot_join_the_others_says_why_without_resume(monkeypatch):
    """Joining fails before anything is made (a port another job holds): not "lost touch", no --resume."""
    import accelerate

    from nitro_cli import distributed
    from nitro_cli.errors import RuntimeFailure

    def port_taken(*args, **kwargs):
        raise RuntimeError("The server socket has failed to listen on any local network address. "
                           "port: 29500, useIpv6: false, code: -98, name: EADDRINUSE\nmore detail")

    monkeypatch.setattr(accelerate, "PartialState", port_taken)
    with pytest.raises(RuntimeFailure, match="could not join the other processes of this run: .*EADDRINUSE$") \
            as failure:
        distributed._PartialStateProcesses(cpu=True)
    assert "MASTER_PORT" in failure.value.hint and "--resume" not in failure.value.hint


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt(), 130), (ValueError("bug"), 1)])
def test_the_others_exit_with_the_main_process_code_when_its_decision_fails(monkeypatch, error, code):
    """Ctrl-C while the main process plans the run: the others hear 130 (interrupted), as on_every tells it,
    not 1 (a run-time failure)."""
    import accelerate.utils

    from nitro_cli import distributed

    sent = []
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda box: sent.append(list(box)))
    processes = object.__new__(distributed._PartialStateProcesses)  # joined to nobody: the collective is a fake

    def decide():
        raise error

    processes.index, processes.count = 0, 2
    with pytest.raises(type(error)):
        processes.from_main(decide)
    assert sent == [[(None, code)]]


@pytest.mark.parametrize("index, codes, outcome", [
    (0, [2, 2], "own error"),  # every process failed alike: the main process tells it
    (1, [2, 1], SystemExit(2)),  # ... and the others keep quiet, exiting with its code, whatever their own
    (1, [0, 1], "own error"),  # only this one failed (a file missing on its machine): it tells why
    (0, [0, 1], SystemExit(1)),  # ... and the main process, which did not fail, exits with that code
    (1, [0, 0], "value"),
])
def test_each_failure_of_a_step_every_process_takes_is_told_once(index, codes, outcome):
    from nitro_cli import distributed
    from nitro_cli.errors import UsageError

    processes = object.__new__(distributed._PartialStateProcesses)  # joined to nobody: the collective is a fake
    processes.index, processes.count = index, len(codes)
    processes.gather = lambda code: codes
    failure = UsageError("prompts file line 2: unknown option")

    def work():
        if codes[index]:
            raise failure
        return "value"

    if outcome == "value":
        assert processes.on_every(work) == "value"
        return
    with pytest.raises(BaseException) as raised:
        processes.on_every(work)
    if outcome == "own error":
        assert raised.value is failure
    else:
        assert type(raised.value) is SystemExit and raised.value.code == outcome.code


@pytest.mark.parametrize("sent, outcome", [(("plan", 0), "plan"), ((None, 2), SystemExit(2))])
def test_the_others_take_the_main_process_decision_or_exit_with_its_code(monkeypatch, sent, outcome):
    """A process other than the main one never runs `decide`: it gets the value, or the main process's exit code
    (the main process printed the error)."""
    import accelerate.utils

    from nitro_cli import distributed

    def broadcast(box):
        box[0] = sent

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)
    processes = object.__new__(distributed._PartialStateProcesses)  # joined to nobody: the collective is a fake
    processes.index, processes.count = 1, 2
    decide = lambda: pytest.fail("a process other than the main one decided")  # noqa: E731
    if isinstance(outcome, SystemExit):
        with pytest.raises(SystemExit) as exited:
            processes.from_main(decide)
        assert exited.value.code == outcome.code
    else:
        assert processes.from_main(decide) == outcome


@pytest.mark.parametrize("failed", [False, True])
def test_processes_leave_together_after_a_run_and_at_once_after_a_failure(failed):
    """After a run every process waits for the others before tearing gloo down; after a failure it doesn't, since
    the others' last collective has already failed without it, and waiting would hang them."""
    from types import SimpleNamespace

    from nitro_cli import distributed

    calls = []
    processes = object.__new__(distributed._PartialStateProcesses)  # joined to nobody: the state is a fake
    processes._state = SimpleNamespace(wait_for_everyone=lambda: calls.append("wait"),
                                       destroy_process_group=lambda: calls.append("destroy"))
    with pytest.raises(ValueError) if failed else contextlib.nullcontext():
        with processes:
            if failed:
                raise ValueError("this process failed")
    assert calls == (["destroy"] if failed else ["wait", "destroy"])


def test_commands_other_than_generate_run_in_the_main_process_only(runner, monkeypatch):
    """`torchrun ... -m nitro_cli checklist --json` (or doctor, bench, export): one report, from rank 0; N copies
    on one stdout are not one JSON document (and N benches would measure each other)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)  # as torchrun and accelerate launch set them
    other = runner.invoke(app, ["checklist", "--json"])
    assert other.exit_code == 0 and other.stdout == "" and other.stderr == ""
    monkeypatch.setenv("RANK", "0")
    main = runner.invoke(app, ["checklist", "--json"])
    assert main.exit_code == 0, main.output
    assert json.loads(main.stdout) and "only the main one (rank 0) runs it" in main.stderr
    for name in ("RANK", "MASTER_ADDR"):  # WORLD_SIZE left in a shell, no launcher: no launcher to speak of
        monkeypatch.delenv(name, raising=False)
    alone = runner.invoke(app, ["checklist", "--json"])
    assert alone.exit_code == 0 and json.loads(alone.stdout) and "launcher" not in alone.stderr


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_pil_conversion_on_the_device_gives_diffusers_pixels(dtype):
    """run_batch converts to uint8 before leaving the device; the bytes must be what diffusers' own numpy path
    (VaeImageProcessor.postprocess with output_type="pil") makes from the same decoder output."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    decoded = torch.randn(3, 3, 24, 16, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    processor = VaeImageProcessor()
    expected = processor.postprocess(decoded, output_type="pil")
    images = generation.to_pil_images(processor.postprocess(decoded, output_type="pt"))
    assert [image.size for image in images] == [(16, 24)] * 3
    for got, want in zip(images, expected):
        assert got.mode == want.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(want))


def test_numbers_past_99999_are_seen_so_a_new_run_never_reuses_them(runner, tmp_path):
    """A big prompt file can take a folder past five digits: `100000-...` must count for the next run's first
    number, or that run starts at 100000 again (and with the same seed and prompt overwrites the image)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("99999-4-castle.png", "100000-5-castle.png"):
        Image.new("RGB", (8, 8)).save(out / name)
    before = (out / "100000-5-castle.png").read_bytes()
    result = runner.invoke(app, ["generate", "castle", "--seed", "5", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert pngs(out) == ["100000-5-castle.png", "100001-5-castle.png", "99999-4-castle.png"]
    assert (out / "100000-5-castle.png").read_bytes() == before


@pytest.mark.parametrize("json_output", [True, False])
def test_each_stdout_line_reaches_the_os_in_one_write(monkeypatch, tmp_path, json_output):
    """Several processes (torchrun) share one stdout pipe; a line written in two pieces lets another process's
    line land between them, and `--json` readers get a broken line. With PYTHONUNBUFFERED=1 (common in
    containers) stdout writes through: each `write` call is a system call, so a line must be one call."""
    import io

    from nitro_cli.measure import Measurement
    from nitro_cli.progress import RunDisplay

    class RecordingPipe(io.RawIOBase):
        def __init__(self):
            self.writes: list[bytes] = []

        def writable(self):
            return True

        def write(self, data):
            self.writes.append(bytes(data))
            return len(data)

    pipe = RecordingPipe()
    # What Python builds for stdout under PYTHONUNBUFFERED=1: a write-through text layer on the raw file.
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(pipe, encoding="utf-8", write_through=True))
    display = RunDisplay(2, json_output=json_output, model="random:tiny", preset="deploy", bars=False)
    for planned in tiny_plan(["castle", "dragon"]):
        display.image_done(generation.ImageResult(planned, tmp_path / planned.name, 0.1, 20.0, 2, Measurement()))
    assert len(pipe.writes) == 2
    for write, planned in zip(pipe.writes, tiny_plan(["castle", "dragon"])):
        assert write.endswith(b"\n") and write.count(b"\n") == 1 and planned.name.encode() in write


def test_deploy_is_expert_at_batch_8():
    """docs/gpu-variants measures deploy's levers as the expert variants at --batch-size 8: that holds while
    deploy differs from expert by its batch size alone."""
    import dataclasses

    from nitro_cli.presets import load_preset

    expert, deploy = load_preset("expert").settings, load_preset("deploy").settings
    differ = [f.name for f in dataclasses.fields(expert) if getattr(expert, f.name) != getattr(deploy, f.name)]
    assert sorted(differ) == ["batch_size", "claimed", "scenario", "tier"] and deploy.batch_size == 8
