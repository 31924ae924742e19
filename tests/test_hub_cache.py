"""Hub ids (the default model first) from a Hugging Face cache laid out as huggingface_hub lays it out, offline."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nitro_cli.cli import app
from nitro_cli.models import DEFAULT_MODEL, hub_model_error
from tests.conftest import FAST

ARGS = [a for a in FAST if a not in ("--model", "random:tiny")]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(hub_cache, tiny_model_dir, repo_id=DEFAULT_MODEL):
    """`random:tiny` as a cached snapshot of `repo_id`: models--owner--name/snapshots/COMMIT and refs/main."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import: point this process's at the test's.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def generate_in_a_process(tmp_path, *args, **env):
    """`nitro generate castle ARGS` in a real process, as a user runs it, with HF_HOME and nitro's cache in
    `tmp_path` and `env` on top of this process's environment (None unsets a variable)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "NITRO_CACHE_DIR": str(tmp_path / "nitro"), **env}
    return subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "castle", "--out", str(tmp_path / "out"),
                           *args, *ARGS], capture_output=True, text=True, timeout=300,
                          env={key: value for key, value in env.items() if value is not None})


def test_default_model_loads_from_the_cache_offline_without_hub_chatter(tiny_model_dir, tmp_path):
    """A real process, as a user runs it: HF_HOME's cache, HF_HUB_OFFLINE=1, no --model."""
    cache_model(tmp_path / "hf" / "hub", tiny_model_dir)
    result = generate_in_a_process(tmp_path, "--json", HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert "Could not reach the Hub" not in result.stderr  # huggingface_hub's warning on every offline run
    from PIL import Image

    record = json.loads(result.stdout.splitlines()[-1])
    assert f"Model: {DEFAULT_MODEL}," in Image.open(record["path"]).text["parameters"]


def test_an_incomplete_cached_model_offline_is_one_error_line(tiny_model_dir, tmp_path):
    """A real process, where diffusers' logger writes: no error of its own before nitro's."""
    snapshot = cache_model(tmp_path / "hf" / "hub", tiny_model_dir)
    drop_unet_weights(snapshot)
    result = generate_in_a_process(tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("Warning: float16 skipped")] == [
        f"Error: model '{DEFAULT_MODEL}' is incomplete in the Hugging Face cache (unet has no weights file: {snapshot})",
        f"Hint: finish the download: `hf download {DEFAULT_MODEL}` once online"]


@pytest.fixture
def silent_endpoint():
    """The address of a hub that takes connections and never answers, as a stalled proxy or firewall does:
    the kernel completes connections to a listening socket that nobody accepts."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextlib.contextmanager
def answering_hub(answer):
    """The address of a local hub that answers each request for a path with `answer(path)`: status, headers, body."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, headers, body = answer(self.path)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


@pytest.fixture
def online_hub(hub_cache, monkeypatch):
    """`online_hub(endpoint)`: this process online, its hub `endpoint` (for diffusers' and transformers' own
    questions too). A test that hangs all the same fails after a minute."""
    import signal

    from huggingface_hub import constants, hf_api

    from nitro_cli import models

    def online(endpoint):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # the HfApi behind huggingface_hub's functions
        return endpoint

    class Hung(BaseException):  # not an Exception: the HTTP and hub libraries catch those and retry
        pass

    def hung(signum, frame):
        raise Hung("still waiting for the hub after 60 s")

    models._ask_hub.cache_clear()  # answers and warnings are kept for the process
    models._warn_once.cache_clear()
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield online
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    models._ask_hub.cache_clear()
    models._warn_once.cache_clear()


@pytest.fixture
def silent_hub(online_hub, silent_endpoint, monkeypatch):
    """online_hub of `silent_endpoint`, waited for 1 s (HF_HUB_ETAG_TIMEOUT). A hub that answers keeps the 10 s
    default: a loaded machine must not turn its answer into silence."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    return online_hub(silent_endpoint)


def test_a_hub_that_never_answers_does_not_hang_a_cached_model(tiny_model_dir, tmp_path, silent_endpoint):
    """A real process, online behind a proxy that stalls: diffusers asks the hub about the model with no time
    limit (this hung for ever); nitro asks first, within huggingface_hub's limit, then loads the cached copy."""
    cache_model(tmp_path / "hf" / "hub", tiny_model_dir)
    result = generate_in_a_process(tmp_path, "--json", HF_HUB_OFFLINE=None, HF_ENDPOINT=silent_endpoint,
                                   HF_HUB_ETAG_TIMEOUT="1")
    assert result.returncode == 0, result.stderr
    assert re.search(re.escape(f"Warning: the Hugging Face hub was not reached (no answer from {silent_endpoint} in ")
                     + r"\d+" + re.escape(f" s): {DEFAULT_MODEL} loads from its cached copy; HF_HUB_OFFLINE=1 "
                                          "skips asking"), result.stderr)
    assert Path(json.loads(result.stdout.splitlines()[-1])["path"]).is_file()


@pytest.mark.parametrize("has_model", [False, True])
def test_a_hub_that_answers_is_not_taken_for_a_silent_one(tmp_path, has_model):
    """A real process asking a hub that answers. Without the model ("repository not found"), diffusers' own
    load runs and names it, and nothing says it downloads. With it, one line says a download begins (this hub
    then has no file to give)."""
    def answer(path):
        if has_model and path.startswith("/api/models/someone/model"):
            return 200, {"Content-Type": "application/json"}, json.dumps({"id": "someone/model", "sha": COMMIT,
                                                                          "siblings": []}).encode()
        return 404, {"X-Error-Code": "RepoNotFound"}, b""  # huggingface_hub's RepositoryNotFoundError

    with answering_hub(answer) as endpoint:
        result = generate_in_a_process(tmp_path, "--model", "someone/model", HF_HUB_OFFLINE=None, HF_ENDPOINT=endpoint)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "hub was not reached" not in result.stderr
    assert ("Downloading someone/model into the Hugging Face cache ..." in result.stderr) == has_model
    assert has_model or "Error: model 'someone/model' not found on the hub" in result.stderr


def test_a_silent_hub_is_asked_once_per_run(runner, hub_cache, silent_hub, tiny_model_dir, monkeypatch):
    """bench loads the model once per preset: one wait (else in each preset's load time) and one warning, not
    one per preset."""
    from huggingface_hub import HfApi

    asked, model_info = [], HfApi.model_info
    monkeypatch.setattr(HfApi, "model_info", lambda api, repo_id, **kwargs: asked.append(repo_id) or
                        model_info(api, repo_id, **kwargs))
    cache_model(hub_cache, tiny_model_dir)
    result = runner.invoke(app, ["bench", "--presets", "beginner,advanced", *ARGS, "--runs", "1", "--warmup", "0",
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    assert [row["error"] for row in json.loads(result.stdout)["results"]] == [None, None]
    assert result.stderr.count("Warning: the Hugging Face hub was not reached") == 1
    assert asked == [DEFAULT_MODEL]


def test_a_silent_hub_warning_gives_the_time_waited(hub_cache, silent_hub, tiny_model_dir, monkeypatch, capsys):
    """Not the time limit: huggingface_hub may first ask the silent hub something of its own (its agent-harness
    list, 3 s more), here 2 s of it."""
    from huggingface_hub import HfApi

    from nitro_cli import models

    model_info = HfApi.model_info
    monkeypatch.setattr(HfApi, "model_info", lambda api, repo_id, **kwargs: time.sleep(2) or
                        model_info(api, repo_id, **kwargs))
    cache_model(hub_cache, tiny_model_dir)
    started = time.monotonic()
    assert models._from_cache_alone(DEFAULT_MODEL, with_safety_checker=False)
    waited = int(re.search(re.escape(f"no answer from {silent_hub} in ") + r"(\d+) s", capsys.readouterr().err)[1])
    assert 3 <= waited <= time.monotonic() - started + 0.5


# (RANK, LOCAL_RANK): the main process, another on its machine, the first on a second machine.
LAUNCHED_PROCESSES = [("0", "0", True), ("1", "1", False), ("2", "0", True)]


@pytest.mark.parametrize("rank, local_rank, says", LAUNCHED_PROCESSES)
def test_each_machines_first_process_alone_warns_of_a_silent_hub(hub_cache, silent_hub, tiny_model_dir,
                                                                  monkeypatch, capsys, rank, local_rank, says):
    """Every process of a launched run asks the hub: one warning per machine (its terminal, its network), not
    one per GPU."""
    from nitro_cli import models

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    cache_model(hub_cache, tiny_model_dir)
    assert models._from_cache_alone(DEFAULT_MODEL, with_safety_checker=False)
    assert ("Warning: the Hugging Face hub was not reached" in capsys.readouterr().err) == says


def test_a_silent_hub_leaves_the_safety_checker_to_the_cache(hub_cache, silent_hub):
    """A single file has no checker: transformers would ask the hub about the SD 1.x one with no time limit."""
    import torch

    from nitro_cli import models

    assert models.load_safety_checker(torch.float32) is None  # not cached: the preset goes on without it


def test_the_safety_checkers_download_gets_its_line_too(hub_cache, online_hub, capsys):
    """A single file has no checker: the SD 1.x one downloads after a line, as a model does (this hub then has
    no file to give)."""
    import torch

    from nitro_cli import models

    def answer(path):
        if path.startswith(f"/api/models/{models.SAFETY_CHECKER_REPO}"):
            return 200, {"Content-Type": "application/json"}, json.dumps(
                {"id": models.SAFETY_CHECKER_REPO, "sha": COMMIT, "siblings": []}).encode()
        return 404, {"X-Error-Code": "EntryNotFound"}, b""

    with answering_hub(answer) as endpoint:
        online_hub(endpoint)
        assert models.load_safety_checker(torch.float32) is None
    assert f"Downloading {models.SAFETY_CHECKER_REPO} into the Hugging Face cache ..." in capsys.readouterr().err


@pytest.mark.parametrize("rank, local_rank, says", LAUNCHED_PROCESSES)
def test_each_machines_first_process_alone_says_it_downloads(hub_cache, online_hub, capsys, monkeypatch, rank,
                                                              local_rank, says):
    """Every process of a launched run downloads into its machine's cache (the hub's file locks share the
    work): one line per machine, not one per GPU."""
    from nitro_cli import models

    def answer(path):
        return 200, {"Content-Type": "application/json"}, json.dumps({"id": "someone/model", "sha": COMMIT,
                                                                      "siblings": []}).encode()

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with answering_hub(answer) as endpoint:
        online_hub(endpoint)
        assert not models._from_cache_alone("someone/model", with_safety_checker=False)
    assert ("Downloading someone/model into the Hugging Face cache ..." in capsys.readouterr().err) == says


def test_a_silent_hub_and_no_cached_copy_is_a_usage_error(runner, hub_cache, silent_hub, tmp_path):
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), *ARGS])
    assert result.exit_code == 2, result.output
    assert re.search(re.escape(f"is not in the Hugging Face cache ({hub_cache}) and the hub could not be reached "
                               f"(no answer from {silent_hub} in ") + r"\d+ s\)", result.stderr.replace("\n", ""))
    assert "hub was not reached" not in result.stderr


def test_a_silent_hub_and_a_cached_copy_in_part_is_one_usage_error(runner, hub_cache, silent_hub, tiny_model_dir,
                                                                   tmp_path):
    """Not a warning that the model loads from its cached copy, then an error that it can't."""
    drop_unet_weights(cache_model(hub_cache, tiny_model_dir))
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), *ARGS])
    assert result.exit_code == 2, result.output
    assert (f"Error: model '{DEFAULT_MODEL}' is incomplete in the Hugging Face cache (unet has no weights file"
            in result.stderr.replace("\n", ""))
    assert "loads from its cached copy" not in result.stderr


def test_a_page_that_is_not_the_hubs_is_named_so(runner, online_hub, tmp_path):
    """A network's login page answers every request (HTTP 200, HTML): no hub answered, and the error says so,
    not json's "Expecting value: line 1 column 1 (char 0)"."""
    with answering_hub(lambda path: (200, {"Content-Type": "text/html"}, b"<html>Log in to the Wi-Fi</html>")) \
            as endpoint:
        online_hub(endpoint)
        result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), *ARGS])
    assert result.exit_code == 2, result.output
    assert (f"and the hub could not be reached ({endpoint} answered with a page that is not the hub's"
            in result.stderr.replace("\n", ""))


def drop_unet_weights(snapshot):
    for weights in (snapshot / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()


@pytest.mark.parametrize("model, damage, expected", [
    (DEFAULT_MODEL, None, "is not in the Hugging Face cache ({hub}) and HF_HUB_OFFLINE is set"),
    ("nitrosocke/Nitro-Difusion", "cache the right one", "is not in the Hugging Face cache ({hub})"),
    (DEFAULT_MODEL, drop_unet_weights, "is incomplete in the Hugging Face cache (unet has no weights file"),
    (DEFAULT_MODEL, lambda snapshot: (snapshot / "model_index.json").unlink(), "is not a diffusers pipeline"),
])
def test_hub_model_that_cannot_be_had_says_what_to_do(runner, hub_cache, tiny_model_dir, tmp_path, model, damage,
                                                        expected):
    if damage is not None:
        snapshot = cache_model(hub_cache, tiny_model_dir)
        if callable(damage):
            damage(snapshot)
    args = ARGS if model == DEFAULT_MODEL else ["--model", model, *ARGS]
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert f"Error: model '{model}' {expected.format(hub=hub_cache)}" in result.stderr.replace("\n", "")
    assert f"hf download {model}" in result.stderr.replace("\n", "")
    assert "local_files_only" not in result.output  # diffusers' advice to Python callers
    assert "Downloading" not in result.stderr  # offline: nothing is asked for


def http_error(error_class, status):
    import httpx2

    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{DEFAULT_MODEL}")
    return error_class("hub said no", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("cause, expected, hint", [
    ("GatedRepoError", "is gated", "HF_TOKEN"),
    ("RepositoryNotFoundError", "not found on the hub", "check the spelling"),
])
def test_hub_answers_are_named(hub_cache, cause, expected, hint):
    from huggingface_hub import errors

    try:
        try:
            raise http_error(getattr(errors, cause), 401)
        except Exception as hub_error:  # diffusers wraps the hub's error in its own not-cached OSError
            raise OSError("Cannot load model: the model is not fully cached locally") from hub_error
    except OSError as exc:
        error = hub_model_error(DEFAULT_MODEL, exc)
    assert expected in error.message and hint in error.hint


def test_unreachable_hub_is_named_with_its_reason(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as network_error:
            raise OSError("Cannot load model: outgoing traffic has been disabled") from network_error
    except OSError as exc:
        error = hub_model_error(DEFAULT_MODEL, exc)
    assert error.message.endswith("the hub could not be reached ([Errno -2] Name or service not known)")
    assert "HF_HUB_OFFLINE" not in error.hint


@pytest.mark.parametrize("status, fix", [(401, "check your token (HF_TOKEN"), (429, "try again later")])
def test_a_hub_error_answer_is_not_called_unreachable(hub_cache, monkeypatch, status, fix):
    from huggingface_hub import constants, errors

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        try:
            raise http_error(errors.HfHubHTTPError, status)
        except errors.HfHubHTTPError as hub_error:
            raise OSError("Cannot load model: the model is not cached locally") from hub_error
    except OSError as exc:
        error = hub_model_error(DEFAULT_MODEL, exc)
    assert error.message.endswith("and the hub answered with an error (hub said no)")
    assert error.hint.startswith(fix)


def test_bench_checks_a_hub_model_once_before_any_preset(runner, hub_cache, tiny_model_dir):
    """Not cached (offline): one usage error before any preset, where each row failed alike (exit 1, a report of
    failed rows). Cached: every row loads from the cache."""
    from nitro_cli import paths

    missing = runner.invoke(app, ["bench", "--presets", "beginner,advanced", *ARGS, "--runs", "1", "--warmup", "0"])
    assert missing.exit_code == 2, missing.output
    assert missing.stderr.count(f"Error: model '{DEFAULT_MODEL}' is not in the Hugging Face cache") == 1
    assert "beginner" not in missing.stderr.split("Error:")[0] and not paths.bench_dir().exists()

    cache_model(hub_cache, tiny_model_dir)
    cached = runner.invoke(app, ["bench", "--presets", "beginner,advanced", *ARGS, "--runs", "1", "--warmup", "0",
                                 "--json", "-"])
    assert cached.exit_code == 0, cached.output
    report = json.loads(cached.stdout)
    assert report["environment"]["model"] == DEFAULT_MODEL
    assert [row["error"] for row in report["results"]] == [None, None]


def test_bench_of_an_incomplete_cached_hub_model_is_one_usage_error(runner, hub_cache, tiny_model_dir):
    """A download stopped half way, then an offline bench: one usage error naming what is missing, where each
    row failed alike (exit 1) with the same words."""
    from nitro_cli import paths

    drop_unet_weights(cache_model(hub_cache, tiny_model_dir))
    result = runner.invoke(app, ["bench", "--presets", "beginner,advanced", *ARGS, "--runs", "1", "--warmup", "0"])
    assert result.exit_code == 2, result.output
    stderr = result.stderr.replace("\n", "")
    incomplete = f"Error: model '{DEFAULT_MODEL}' is incomplete in the Hugging Face cache (unet has no weights file"
    assert stderr.count(incomplete) == 1
    assert "beginner" not in result.stderr.split("Error:")[0] and not paths.bench_dir().exists()


def test_bench_of_onnx_presets_fetches_no_pytorch_hub_model(runner, hub_cache, tmp_path):
    """An ONNX preset runs an export, never the hub model's PyTorch weights: fetching them first downloaded GBs
    (online) or stopped the bench with 'not in the Hugging Face cache' and `hf download` (offline), where the row's
    own error says what helps: export it."""
    preset = tmp_path / "onnx.yaml"
    preset.write_text("backend: onnx\n", encoding="utf-8")
    result = runner.invoke(app, ["bench", "--presets", str(preset), *ARGS, "--runs", "1", "--warmup", "0",
                                 "--json", "-"])
    assert result.exit_code == 1, result.output
    assert "not in the Hugging Face cache" not in result.stderr
    [row] = json.loads(result.stdout)["results"]
    assert "needs an ONNX export" in row["error"]


def test_a_cached_model_of_fp16_variant_files_alone_loads_offline(runner, hub_cache, tmp_path):
    """The diffusers docs download SD 1.x with `variant="fp16"`, which caches model.fp16.safetensors files alone:
    generate and bench called that snapshot incomplete, and online would have downloaded the plain weights too."""
    from nitro_cli.models import build_random_pipeline

    build_random_pipeline("random:tiny").save_pretrained(tmp_path / "fp16", variant="fp16")
    cache_model(hub_cache, tmp_path / "fp16")
    generated = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), "--json", *ARGS])
    assert generated.exit_code == 0, generated.output
    benched = runner.invoke(app, ["bench", "--presets", "beginner", *ARGS, "--runs", "1", "--warmup", "0",
                                  "--json", "-"])
    assert benched.exit_code == 0, benched.output
    assert [row["error"] for row in json.loads(benched.stdout)["results"]] == [None]


def test_a_cached_model_without_safety_checker_weights_serves_the_presets_that_leave_it_off(runner, hub_cache,
                                                                                            tiny_model_dir, tmp_path):
    """`hf download --exclude "safety_checker/*"` saves a GB: advanced (no checker) runs from such a snapshot, and
    baseline (checker on) says what is missing."""
    snapshot = cache_model(hub_cache, tiny_model_dir)
    for weights in (snapshot / "safety_checker").glob("model*"):
        weights.unlink()
    benched = runner.invoke(app, ["bench", "--presets", "advanced", *ARGS, "--runs", "1", "--warmup", "0",
                                  "--json", "-"])
    assert benched.exit_code == 0, benched.output
    assert [row["error"] for row in json.loads(benched.stdout)["results"]] == [None]
    refused = runner.invoke(app, ["generate", "castle", "--preset", "baseline", "--out", str(tmp_path / "out"), *ARGS])
    assert refused.exit_code == 2, refused.output
    assert "incomplete in the Hugging Face cache (safety_checker has no weights file" in refused.stderr.replace("\n", "")
