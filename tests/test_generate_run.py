"""Full generate runs on `random:tiny`: seeds, batching, files, metadata, JSON, resume, interruption, guards."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nitro_cli import generation
from nitro_cli.cli import app
from tests.conftest import FAST, assert_same_but_for_batch_rounding

REPO = Path(__file__).resolve().parent.parent
# AUTOMATIC1111's own patterns, copied from modules/infotext_utils.py (re_param_code, re_imagesize).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Read `parameters` back as A1111 does: a copy of the parsing part of `parse_generation_parameters` and of
    `unquote` (modules/infotext_utils.py; style extraction and defaults for missing keys left out). The last
    line holds the params if it has three or more; the lines before are the prompt, then, from the line
    starting `Negative prompt:` on, the negative prompt (each line stripped); a value in quotes is a JSON
    string; a `WxH` value becomes `Key-1` and `Key-2`; a key with an empty value is dropped (IndexError)."""
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(A1111_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in A1111_PARAM.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                try:  # unquote
                    v = json.loads(v)
                except Exception:
                    pass
            m = A1111_IMAGE_SIZE.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            pass  # A1111 prints "Error parsing" and goes on
    return prompt, negative_prompt, res


def write_prompts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_same_seed_same_pixels_and_random_seeds_are_recorded(runner, tmp_path):
    one, two, drawn = tmp_path / "one", tmp_path / "two", tmp_path / "drawn"
    for folder in (one, two):
        assert runner.invoke(app, ["generate", "castle", "--seed", "10", "--out", str(folder), *FAST]).exit_code == 0
    assert pngs(one) == pngs(two) == ["00000-10-castle.png"]
    assert np.array_equal(pixels(one / "00000-10-castle.png"), pixels(two / "00000-10-castle.png"))

    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--json", "--out", str(drawn), *FAST])
    seeds = [json.loads(line)["seed"] for line in result.stdout.splitlines()]
    assert seeds[1] == seeds[0] + 1
    for seed, name in zip(seeds, pngs(drawn)):
        assert name.split("-")[1] == str(seed)
        assert parse_infotext(Image.open(drawn / name).text["parameters"])[2]["Seed"] == str(seed)
    assert not np.array_equal(*(pixels(drawn / name) for name in pngs(drawn)))


def test_seed_minus_one_draws_a_random_seed_as_in_a1111(runner, tmp_path):
    """A prompts file's `--seed -1` meant random, and the command line's was an error."""
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--seed", "-1", "--json", "--out", str(tmp_path),
                                 *FAST])
    assert result.exit_code == 0, result.output
    seeds = [json.loads(line)["seed"] for line in result.stdout.splitlines()]
    assert seeds[0] >= 0 and seeds[1] == seeds[0] + 1
    assert json.loads((tmp_path / ".nitro-run.json").read_text(encoding="utf-8"))["first_seed"] == seeds[0]


def test_cross_prompt_batches_give_one_by_one_pixels(runner, tmp_path):
    prompts = write_prompts(tmp_path, "castle\n--prompt a dragon --negative_prompt blurry\n")
    batched, single = tmp_path / "batched", tmp_path / "single"
    for folder, batch in ((batched, "4"), (single, "1")):
        result = runner.invoke(app, ["generate", "-f", str(prompts), "--seed", "3", "--batch-size", batch,
                                     "--out", str(folder), *FAST])
        assert result.exit_code == 0, result.output
        assert ("batch of 2" in result.stderr) == (batch == "4")  # both prompts went through one call
    names = pngs(batched)
    assert names == pngs(single) == ["00000-3-castle.png", "00001-4-a-dragon.png"]
    for name in names:
        assert_same_but_for_batch_rounding(pixels(batched / name), pixels(single / name), name)


def test_a_second_run_never_overwrites(runner, tmp_path):
    args = ["generate", "castle", "--seed", "1", "--out", str(tmp_path), *FAST]
    runner.invoke(app, args)
    first = (tmp_path / "00000-1-castle.png").read_bytes()
    assert runner.invoke(app, args).exit_code == 0
    assert pngs(tmp_path) == ["00000-1-castle.png", "00001-1-castle.png"]
    assert (tmp_path / "00000-1-castle.png").read_bytes() == first


def test_metadata_parses_back_like_a1111(runner, tmp_path):
    prompts = write_prompts(tmp_path, '--prompt "princess, golden: hair" --negative_prompt "blurry, dark" '
                                      "--seed 77 --steps 3 --cfg_scale 6.5 --width 72 --style arcane\n")
    out = tmp_path / "out"
    assert runner.invoke(app, ["generate", "-f", str(prompts), "--out", str(out), *FAST]).exit_code == 0
    [name] = pngs(out)
    prompt, negative, params = parse_infotext(Image.open(out / name).text["parameters"])
    assert (prompt, negative) == ("princess, golden: hair, arcane style", "blurry, dark")
    assert {k: params[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2", "Model", "Preset")} == {
        "Steps": "3", "Sampler": "Euler a", "CFG scale": "6.5", "Seed": "77", "Size-1": "72", "Size-2": "64",
        "Model": "random:tiny", "Preset": "beginner"}
    assert "Schedule type" not in params  # Euler a's own schedule: what A1111 reads without one
    assert "Preset overrides" not in params  # --steps, --width, --height: given as Steps and Size


def test_metadata_names_the_preset_overrides_that_made_the_image(runner, tmp_path):
    """`--set` changes the pixels (precision, scheduler): the parameters say so beside the preset's name."""
    assert runner.invoke(app, ["generate", "castle", "--set", "scheduler=ddim", "--set", "vae.slicing=true",
                               "--guidance", "5", "--out", str(tmp_path), *FAST]).exit_code == 0
    [name] = pngs(tmp_path)
    _, _, params = parse_infotext(Image.open(tmp_path / name).text["parameters"])
    assert (params["Preset"], params["Preset overrides"]) == ("beginner", "scheduler=ddim; vae.slicing=true")
    assert (params["Sampler"], params["CFG scale"]) == ("DDIM", "5.0")


@pytest.mark.parametrize("prompt, negative", [
    ("castle, on a hill: dawn", ""),
    ('say "hi", then: leave', 'a "b", c: d'),
    ("line one,\nline \"two\": x", "neg one\nneg, two"),
    ("Steps: 3, Sampler: x, CFG scale: 1", "Steps: 3, Seed: 4, Size: 8x8"),
    ("\u57ce\u5821, back\\slash", "tab\there"),
    ("ch\u00e2teau \u00fcber alles, \u2728 \U0001f409", "\u0443\u0440\u043e\u0434\u043b\u0438\u0432\u044b\u0439"),
    ("castle, then Negative prompt: inside a line", "dark, Negative prompt: again"),
    ("a castle, " * 3000 + "the end", "blurry, " * 1000 + "last"),
])
@pytest.mark.parametrize("model", ["random:tiny", "C:\\models\\a,b.ckpt", 'my "best" model', '"best"', "x, \"y\""])
def test_infotext_round_trips_through_a1111s_reader(prompt, negative, model, tmp_path):
    from packaging import version

    from nitro_cli.output import infotext, save_png

    path = tmp_path / "image.png"  # through a PNG: tEXt holds Latin-1 only, other text goes in an iTXt chunk
    save_png(Image.new("RGB", (8, 8)), path, infotext(prompt, negative, {
        "Steps": 2, "Sampler": "DPM++ 2M", "Schedule type": "Uniform", "CFG scale": 7.5, "Seed": 3,
        "Size": "64x48", "Model": model, "Preset": "my, preset"}))
    parsed_prompt, parsed_negative, params = parse_infotext(Image.open(path).text["parameters"])
    assert (parsed_prompt, parsed_negative) == (prompt, negative)
    assert {k: params[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2",
                                   "Model", "Preset")} == {
        "Steps": "2", "Sampler": "DPM++ 2M", "Schedule type": "Uniform", "CFG scale": "7.5", "Seed": "3",
        "Size-1": "64", "Size-2": "48", "Model": model, "Preset": "my, preset"}
    # A1111's infotext_versions.parse_version: a version it can parse below 1.6 would switch on its
    # compatibility settings for old images.
    with pytest.raises(version.InvalidVersion):
        version.parse(params["Version"])


@pytest.mark.parametrize("prompt, negative", [
    ("castle\nNegative prompt: in the sky", "blurry"),
    ("castle,\n\n   Negative prompt: in the sky\nat dawn", ""),
    ("castle", "blurry\nNegative prompt: twice"),
])
def test_a_prompt_line_starting_like_the_negative_prompt_is_read_as_prompt(prompt, negative):
    """A1111's reader would start the negative prompt at such a line: it is joined to the line before, which
    CLIP's tokenizer reads the same (it takes any run of blank space for one space)."""
    from nitro_cli.models import clip_tokenizer
    from nitro_cli.output import infotext

    parsed_prompt, parsed_negative, _ = parse_infotext(infotext(prompt, negative, {
        "Steps": 2, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 3}))
    tokens = clip_tokenizer()
    assert tokens(parsed_prompt).input_ids == tokens(prompt).input_ids
    assert tokens(parsed_negative).input_ids == tokens(negative).input_ids


def test_plain_dpmpp_2m_names_its_schedule(runner, tmp_path):
    """A1111 1.9 on reads `DPM++ 2M` alone as DPM++ 2M with its default Karras schedule."""
    assert runner.invoke(app, ["generate", "castle", "--set", "scheduler=dpmpp_2m", "--out", str(tmp_path),
                               *FAST]).exit_code == 0
    [name] = pngs(tmp_path)
    params = parse_infotext(Image.open(tmp_path / name).text["parameters"])[2]
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Uniform")


def test_multiline_prompts_with_quotes_parse_back_like_a1111(runner, tmp_path):
    prompt, negative = 'castle, "tall":\ntowers, at dawn', 'blurry,\n"low": res'
    assert runner.invoke(app, ["generate", prompt, "--negative", negative, "--style", "arcane", "--seed", "5",
                               "--out", str(tmp_path), *FAST]).exit_code == 0
    [name] = pngs(tmp_path)
    parsed_prompt, parsed_negative, params = parse_infotext(Image.open(tmp_path / name).text["parameters"])
    assert (parsed_prompt, parsed_negative) == (prompt + ", arcane style", negative)
    assert (params["Seed"], params["Model"], params["Preset"]) == ("5", "random:tiny", "beginner")


def test_pndm_is_written_as_a1111s_plms(runner, tmp_path):
    # diffusers' PNDM with skip_prk_steps (as SD ships it) is PLMS; A1111 has no sampler named PNDM.
    assert runner.invoke(app, ["generate", "castle", "--set", "scheduler=pndm", "--out", str(tmp_path),
                               *FAST]).exit_code == 0
    [name] = pngs(tmp_path)
    assert parse_infotext(Image.open(tmp_path / name).text["parameters"])[2]["Sampler"] == "PLMS"


def test_json_lines_are_the_only_stdout(runner, tmp_path):
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--batch-size", "2", "--json", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        assert Path(record["path"]).is_file() and record["prompt"] == "castle" and record["blocked"] is False
        assert record["seconds"] > 0 and record["it_per_s"] > 0 and record["batch_size"] == 2
        assert record["peak_rss_mib"] > 0 and record["peak_vram_mib"] is None
    assert "Prompt encoding:" in result.stderr


def test_a_json_line_gives_the_settings_its_image_was_made_with(runner, tmp_path):
    prompts = write_prompts(tmp_path, "--prompt castle --negative_prompt blurry --seed 4 --steps 3 --cfg_scale 6 "
                                      "--width 72 --height 64\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "-f", str(prompts), "--json", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert {key: record[key] for key in ("path", "prompt", "negative_prompt", "seed", "steps", "guidance", "width",
                                         "height", "batch_size", "blocked", "vae_fp32_redecode", "preset",
                                         "model")} == {
        "path": str(out / "00000-4-castle.png"), "prompt": "castle", "negative_prompt": "blurry", "seed": 4,
        "steps": 3, "guidance": 6.0, "width": 72, "height": 64, "batch_size": 1, "blocked": False,
        "vae_fp32_redecode": False, "preset": "beginner", "model": "random:tiny"}


def test_each_image_of_a_batch_gets_its_share_of_the_batch_time(runner, tmp_path, monkeypatch):
    """`seconds` is per image: a batch of 2 that took 4 s is 2 s an image (it/s stays the batch call's)."""
    import contextlib

    from nitro_cli.measure import Measurement

    @contextlib.contextmanager
    def four_seconds(device):
        yield Measurement(seconds=4.0, peak_rss_mib=100.0)

    monkeypatch.setattr(generation, "measure", four_seconds)
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--batch-size", "2", "--json",
                                 "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["seconds"], r["it_per_s"], r["batch_size"]) for r in records] == [(2.0, 0.5, 2)] * 2


def test_a_prompt_past_77_tokens_is_warned_about_before_the_images(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "generate_images", lambda *args, **kwargs: [])
    prompt = " ".join(f"word{i}" for i in range(60)) + " lighthouse at the end"
    result = runner.invoke(app, ["generate", prompt, "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert "Warning: prompt longer than 77 tokens; this end of it is ignored:" in result.stderr
    assert "lighthouse at the end" in result.stderr


@pytest.mark.parametrize("json_output", [True, False], ids=["json", "paths"])
def test_stdout_lines_stay_on_stdout_while_progress_bars_draw(runner, tmp_path, monkeypatch, json_output):
    """`nitro generate ... --json > images.jsonl` typed in a terminal: stderr is a terminal, so the bars draw,
    and rich's progress moved stdout's lines onto the terminal (stderr), leaving the file empty. FORCE_COLOR=1
    (set by many CI setups) makes rich take stderr for a terminal the same way."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--out", str(tmp_path), *FAST,
                                 *(["--json"] if json_output else [])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    paths = [json.loads(line)["path"] for line in lines] if json_output else lines
    assert paths == [str(tmp_path / name) for name in pngs(tmp_path)] and len(paths) == 2
    assert str(tmp_path) not in result.stderr


def test_the_images_bar_shows_the_time_left(runner, tmp_path, monkeypatch):
    """A prompts file of thousands of images showed only the time elapsed; tqdm and AUTOMATIC1111 show what is left."""
    import re

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws its bars, as on a terminal
    result = runner.invoke(app, ["generate", "castle", "-n", "3", "--batch-size", "1", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr).replace("\r", "\n")
    times = r"\d+:\d\d:\d\d"
    assert re.search(rf"images .* 3/3 {times} {times}", drawn), drawn


def test_resume_makes_exactly_the_missing_images(runner, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["generate", "castle", "-n", "3", "--batch-size", "1", "--out", str(out), *FAST]
    real_run_batch = generation.run_batch
    calls = []

    def interrupted_on_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_batch(*a, **k)

    monkeypatch.setattr(generation, "run_batch", interrupted_on_second_batch)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130
    assert "1 image(s) of 3 saved" in stopped.stderr and "--resume" in stopped.stderr
    [first] = pngs(out)
    first_bytes = (out / first).read_bytes()
    assert not list(out.glob(".*.part"))
    monkeypatch.setattr(generation, "run_batch", real_run_batch)

    result = runner.invoke(app, [*args, "--resume", "--batch-size", "2"])  # batch size may change on resume
    assert result.exit_code == 0, result.output
    seed = int(first.split("-")[1])  # drawn at random by the first run, recorded in its manifest
    assert pngs(out) == [f"{i:05d}-{seed + i}-castle.png" for i in range(3)]
    assert (out / first).read_bytes() == first_bytes
    assert result.stdout.split() == [str(out / name) for name in pngs(out)[1:]]

    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0 and again.stdout == "" and "3 of 3" in again.stderr
    changed = runner.invoke(app, ["generate", "a different castle", "--resume", "--out", str(out), *FAST])
    assert changed.exit_code == 2 and "different request" in changed.stderr


@pytest.mark.parametrize("change", [["--seed", "6"], ["-n", "3"], ["--steps", "3"], ["--negative", "blurry"],
                                    ["--style", "arcane"], ["--set", "scheduler=ddim"], ["--model", "random:sd15"]])
def test_resume_refuses_a_request_that_would_make_other_images(runner, tmp_path, monkeypatch, change):
    """The seed, the number of images, the settings, the prompt and the model decide the names and pixels of
    a run: resuming with one of them changed would fill the folder with images of another request."""
    monkeypatch.setattr(generation, "generate_images", lambda *args, **kwargs: [])
    args = ["generate", "castle", "--seed", "5", "-n", "2", "--out", str(tmp_path), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--resume", "--batch-size", "2"]).exit_code == 0  # batch size may change
    changed = runner.invoke(app, [*args, *change, "--resume"])
    assert changed.exit_code == 2, changed.output
    assert "different request" in changed.stderr


def test_a_drawn_seed_leaves_room_for_every_image_of_the_run_below_2_32(tmp_path, monkeypatch):
    """Drawn seeds stay in A1111's range, the last image's too, so that each can be typed back into it."""
    from nitro_cli import output

    monkeypatch.setattr(output.random, "randrange", lambda stop: stop - 1)  # the highest seed it may draw
    record = output.start_run(tmp_path, "request", images=3, seed=None, resume=False)
    assert record.first_seed + 2 < 2**32  # the third image's seed


def test_a_run_removes_the_temporary_files_a_killed_run_left(runner, tmp_path):
    """SIGKILL (the OOM killer) gives no chance to clean up: the next run, new or resumed, removes the hidden
    `.part` files it left. Only old ones: a fresh one may be another run's write in progress."""
    out = tmp_path / "out"
    out.mkdir()
    args = ["generate", "castle", "-n", "2", "--out", str(out), *FAST]
    two_hours_ago = os.stat(out).st_mtime - 7200

    def left_by_a_killed_run(name):
        (out / name).write_bytes(b"half a PNG")
        os.utime(out / name, (two_hours_ago, two_hours_ago))

    left_by_a_killed_run(".00000-5-castle.png.4242-0a1b2c3d.part")
    left_by_a_killed_run(".my-notes.part")  # the user's own, not nitro's form
    (out / ".00001-6-castle.png.4343-0a1b2c3d.part").write_bytes(b"a write in progress")
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(p.name for p in out.glob(".*.part")) == [".00001-6-castle.png.4343-0a1b2c3d.part", ".my-notes.part"]

    (out / pngs(out)[1]).unlink()
    left_by_a_killed_run(".00001-7-castle.png.4444-0a1b2c3d.part")
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and len(pngs(out)) == 2
    assert not (out / ".00001-7-castle.png.4444-0a1b2c3d.part").exists()


def test_the_temporary_names_a_write_uses_are_the_ones_a_later_run_removes(tmp_path):
    """The name write_atomically writes to and the pattern cleanup matches are one form: were they to drift
    apart, a killed run's half-written files would stay in --out for good."""
    from nitro_cli import output

    for name in ("00000-5-castle.png", output.MANIFEST_NAME):
        assert output.TEMPORARY_PATTERN.match(output._temporary_path(tmp_path / name).name)


def test_a_new_run_looks_up_no_file_per_planned_image(runner, tmp_path, monkeypatch):
    """A new run's names are numbered past every image in --out, yet it looked for each one on disk before
    the model loaded: most of a million-image run's planning (12 of 14 s on the 2-vCPU dev machine).
    --resume still looks, once per image."""
    looked = []
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda path, *a, **k: looked.append(path.name) or real_exists(path, *a, **k))
    monkeypatch.setattr(generation, "generate_images", lambda *args, **kwargs: [])
    args = ["generate", "castle", "-n", "50", "--seed", "0", "--out", str(tmp_path), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    assert [name for name in looked if name.endswith("-castle.png")] == []
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    assert sorted(name for name in looked if name.endswith("-castle.png")) == [f"{i:05d}-{i}-castle.png" for i in range(50)]


def test_a_mistyped_model_leaves_the_run_record_to_resume_from(runner, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "castle", "-n", "2", "--out", str(out), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    (out / pngs(out)[1]).unlink()  # as if the run had been stopped before its last image
    record = (out / ".nitro-run.json").read_bytes()
    typo = runner.invoke(app, [*[a if a != "random:tiny" else "random:tiyn" for a in args]])
    assert typo.exit_code == 2 and (out / ".nitro-run.json").read_bytes() == record
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and "1 of 2 images already" in resumed.stderr and len(pngs(out)) == 2


def test_the_summary_of_a_big_run_shows_its_first_and_last_images(runner, tmp_path):
    """In a log or a pipe (not a terminal) the table is as wide as its rows, whatever COLUMNS says: a file name
    folded across lines can't be found with grep."""
    prompt = "a castle on a cliff at dawn with dragons flying"
    result = runner.invoke(app, ["generate", prompt, "-n", "23", "--batch-size", "23", "--out", str(tmp_path), *FAST],
                           env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    names = pngs(tmp_path)
    assert len(names) == 23
    shown = [name for name in names if name in result.stderr]
    assert shown == [*names[:10], *names[-10:]]
    assert "... 3 more (every image: --json)" in result.stderr and "Total:" in result.stderr


def saved_image(*, peak_vram_mib, peak_rss_mib):
    """The result of one saved image, `00000-1-a-castle.png`, for a RunDisplay fed by hand."""
    from nitro_cli.generation import ImageResult, PlannedImage
    from nitro_cli.measure import Measurement
    from nitro_cli.prompts import PromptJob

    job = PromptJob(prompt="a castle", negative="", seed=None, steps=2, guidance=7.5, width=64, height=64)
    return ImageResult(PlannedImage(job, 1, "00000-1-a-castle.png"), Path("00000-1-a-castle.png"), seconds=1.0,
                       it_per_s=2.0, batch_size=1,
                       measurement=Measurement(1.0, peak_vram_mib=peak_vram_mib, peak_rss_mib=peak_rss_mib))


@pytest.mark.parametrize("device, column, peak", [("cuda:0", "peak VRAM MiB", "3210"), ("cpu", "peak RSS MiB", "987")])
def test_the_summary_shows_the_peak_memory_of_the_device_the_run_used(capsys, device, column, peak):
    """On a GPU the memory that runs out is VRAM: the process's RSS there would hide a run close to out of memory."""
    from nitro_cli.generation import CacheStats
    from nitro_cli.progress import RunDisplay

    result = saved_image(peak_vram_mib=3210.4, peak_rss_mib=987.2)
    RunDisplay(1, json_output=False, model="random:tiny", preset="beginner").summary(
        [result], CacheStats(enabled=True), 1.0, device)
    table = capsys.readouterr().err
    assert column in table and peak in table.split("00000-1-a-castle.png")[1].split()


def test_the_summary_in_a_narrow_terminal_keeps_the_seeds_whole(runner, tmp_path):
    """A 60-column terminal cut a ten-digit seed to `344199…`, the one number that makes the image again: the file
    names fold instead."""
    result = runner.invoke(app, ["generate", "castle on a cliff", "-n", "2", "--seed", "3441992758",
                                 "--out", str(tmp_path), *FAST],
                           env={"COLUMNS": "60", "FORCE_COLOR": "1"})  # FORCE_COLOR: rich draws as on a terminal
    assert result.exit_code == 0, result.output
    table = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", result.stderr).split("nitro generate")[-1]
    assert "3441992758" in table and "3441992759" in table and "…" not in table
    assert max(len(line) for line in table.splitlines() if line[:1] in "┏┃┡│└") <= 60


@pytest.mark.parametrize("signum, said", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_saves_finished_images_leaves_no_partial_file_and_exits_130(tmp_path, signum, said):
    """SIGTERM is what `kill`, `timeout` and job schedulers send: it stops a run as Ctrl-C does."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NITRO_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "nitro_cli", "generate", "castle", "-n", "200", "--json", "--out", str(out), *FAST],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test run in a script's background (`pytest ... &`) would pass on SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first_line = process.stdout.readline()  # the first image is saved: generation is under way
        assert first_line, process.stderr.read()
        process.send_signal(signum)
        rest, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert f"{said}: stopping after the current step (a second {said} stops at once)" in stderr
    reported = [json.loads(line)["path"] for line in [first_line, *rest.splitlines()]]
    assert sorted(Path(p).name for p in reported) == pngs(out) and 1 <= len(reported) < 200
    assert [p.name for p in out.iterdir() if not p.name.endswith(".png")] == [".nitro-run.json"]
    for name in pngs(out):
        Image.open(out / name).load()  # complete files only


@pytest.fixture
def python_default_handlers():
    """The handlers a `nitro` process starts with, whatever this test process inherited: a script's background
    job (`pytest ... &`) starts with SIGINT ignored."""
    inherited = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in inherited.items():
        signal.signal(signum, handler)


def test_a_second_ctrl_c_stops_at_once_and_the_handlers_are_given_back_after_the_run(python_default_handlers):
    watched = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(signum) for signum in watched]
    with generation.StopAfterStep():
        pass  # a run no signal stopped
    assert [signal.getsignal(signum) for signum in watched] == before
    with generation.StopAfterStep() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested  # the first one only asks
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert [signal.getsignal(signum) for signum in watched] == before


@pytest.mark.parametrize("rank, said", [("0", True), ("1", False)])
def test_a_launched_run_says_it_is_stopping_once_from_the_main_process(python_default_handlers, monkeypatch, capsys,
                                                                       rank, said):
    """A terminal's Ctrl-C reaches every process of a torchrun run: one line, not one per process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with generation.StopAfterStep() as stop:
        signal.raise_signal(signal.SIGINT)
    assert stop.requested
    assert ("Ctrl-C: stopping after the current step" in capsys.readouterr().err) == said


@pytest.mark.parametrize("world_size, rank, said", [
    ("1", "0", "Stopped: 1 image(s) of 3 saved, none half-written. Repeat the command with --resume to make the rest."),
    ("2", "0", "Stopped: process 0 saved 1 of its 3 image(s), none half-written. Repeat the command with --resume"),
    ("2", "1", "Stopped: process 1 saved 1 of its 3 image(s), none half-written.\n"),
])
def test_a_stopped_run_says_what_it_saved_and_a_launched_one_what_each_process_saved(monkeypatch, capsys, world_size,
                                                                                     rank, said):
    """Under torchrun every process is stopped and counts only its own share: "1 of 3" from each of two processes
    read as if the run had saved 1 image of 3. The resume hint is given once."""
    from nitro_cli.progress import RunDisplay

    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setenv("RANK", rank)
    saved = saved_image(peak_vram_mib=None, peak_rss_mib=9.0)
    with pytest.raises(KeyboardInterrupt):
        with RunDisplay(3, json_output=False, model="random:tiny", preset="beginner") as display:
            display.image_done(saved)
            raise KeyboardInterrupt
    stderr = capsys.readouterr().err
    assert said in stderr and stderr.count("Stopped:") == 1


def test_a_signal_the_process_was_started_ignoring_stays_ignored(python_default_handlers):
    """`nitro generate ... &` in a shell script starts with SIGINT ignored, so the terminal's Ctrl-C leaves it be."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with generation.StopAfterStep() as stop:
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)  # not ignored: it asks the run to stop
        assert stop.requested
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_disk_is_an_error_with_a_hint_not_a_traceback(tmp_path):
    """`--json > images.jsonl` on a disk that fills up: writing a line failed with ENOSPC in the writer thread
    and came out as a traceback. /dev/full fails every write that way."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NITRO_CACHE_DIR": str(tmp_path / "cache")}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "nitro_cli", "generate", "castle", "-n", "3", "--batch-size", "1",
                               "--json", "--out", str(out), *FAST],
                              cwd=REPO, env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert "Error: could not write to standard output: No space left on device" in done.stderr
    assert "Hint: " in done.stderr and "--resume" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert 1 <= len(pngs(out)) < 3  # the run stopped at the failure; the image whose line failed is kept


@pytest.mark.parametrize("broken", [float("nan"), -1.0], ids=["nan", "black"])
def test_nan_or_black_from_a_half_precision_vae_is_decoded_again_in_fp32(monkeypatch, broken):
    import torch

    from nitro_cli.models import build_random_pipeline

    pipe = build_random_pipeline("random:tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.to(torch.float16)
    real_decode = pipe.vae.decode

    def overflowing_decode(latents, **kwargs):
        decoded = real_decode(latents, **kwargs)
        if pipe.vae.dtype == torch.float16:  # what an fp16 overflow does: NaN or black in the first image
            decoded[0][0] = broken
        return decoded

    monkeypatch.setattr(pipe.vae, "decode", overflowing_decode)
    cache = generation.PromptCache(pipe, enabled=True)
    result = generation.run_batch(pipe, cache, ["castle", "castle"], ["", ""], [1, 2], steps=2, guidance=7.5,
                                  width=64, height=64)
    assert result.redecoded == [True, False]
    assert pipe.vae.dtype == torch.float32
    image = np.asarray(result.images[0])
    assert image.std() > 0  # a real picture, not black


def test_a_blocked_image_is_reported_not_saved(runner, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    def flag_everything(self, image, device, dtype):
        return image * 0, [True] * len(image)

    monkeypatch.setattr(StableDiffusionPipeline, "run_safety_checker", flag_everything)
    result = runner.invoke(app, ["generate", "castle", "--json", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["blocked"] is True and record["path"] is None
    assert pngs(tmp_path) == []
    assert "blacked out by the safety checker" in result.stderr
    assert "for 0 saved image(s), 1 blocked." in result.stderr
    paths = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST])
    assert paths.exit_code == 0 and paths.stdout == ""  # stdout has the paths of saved images only


def test_cuda_out_of_memory_names_lighter_settings(runner, tmp_path, monkeypatch):
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generation, "run_batch", out_of_memory)
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "Error: CUDA out of memory" in result.stderr
    assert all(word in result.stderr for word in ("offload", "--batch-size 1", "lowvram", "--resume"))



@pytest.mark.parametrize("in_cache", [True, False])
def test_an_empty_library_in_the_compile_cache_is_named_for_deletion(runner, tmp_path, monkeypatch, in_cache):
    """A compile killed part way (SIGKILL mid `g++ -o`) leaves an empty kernel library at its cache path, which torch
    then loads in every run with that kernel: the words torch 2.13 raised for one (a killed second process of
    docs/gpu/run-variants.sh on a CPU). The same words about a library elsewhere are not this failure."""
    from torch._inductor.exc import InductorError

    from nitro_cli import paths

    folder = paths.compile_cache_dir() if in_cache else tmp_path / "elsewhere"
    library = folder / "3u" / "c3ue7shyrilxuxeqnoy2qawazbsv6rzrb3v6gef2dpjpqnirlpoa.main.so"

    def cut_short_library(*args, **kwargs):
        raise InductorError(ImportError(f"{library}: file too short"), None)

    monkeypatch.setattr(generation, "run_batch", cut_short_library)
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path / "out"), *FAST])
    if in_cache:
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"Error: a damaged file in the compile cache: {library}" in result.stderr
        assert f"Hint: delete it and any other empty library there (find {folder.resolve()} -name '*.so' -empty " \
               "-delete), then run again" in result.stderr
    else:
        assert isinstance(result.exception, InductorError)  # a bug to report: its traceback stands

@pytest.mark.parametrize("below", ["", "sub"])
def test_out_that_is_a_file_is_a_usage_error(runner, tmp_path, below):
    """It says which file is in the way: mkdir's own "File exists" reads as if the folder were there."""
    not_a_folder = tmp_path / "taken"
    not_a_folder.write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["generate", "a cat", *FAST, "--out", str(not_a_folder / below)])
    assert result.exit_code == 2, result.output
    assert "Error: cannot write to --out" in result.stderr and "Traceback" not in result.output
    assert f"{not_a_folder} is a file, not a folder" in result.stderr


@pytest.mark.parametrize("below", ["", "sub"])
def test_out_that_is_a_dangling_link_says_so(runner, tmp_path, below):
    """A symbolic link to a folder no longer there (an unmounted disk) said "File exists"."""
    link = tmp_path / "outputs"
    link.symlink_to(tmp_path / "unmounted")
    result = runner.invoke(app, ["generate", "a cat", *FAST, "--out", str(link / below)])
    assert result.exit_code == 2, result.output
    assert f"{link} is a symbolic link to {tmp_path / 'unmounted'}, which is not there" in result.stderr


@pytest.mark.parametrize("resume", [False, True])
def test_an_out_folder_without_write_permission_is_a_usage_error_before_any_image(runner, tmp_path, monkeypatch,
                                                                                   resume):
    """A folder that is there but can't be written (another user's, a read-only mount) is named at the start of
    the run, before its model loads, not as a failed write once it has (with --resume too: that failed late,
    exit 1, with a hint to repeat the command with --resume)."""
    from nitro_cli import builder, output

    out = tmp_path / "out"
    out.mkdir()
    args = ["generate", "a cat", *FAST, "-n", "2", "--seed", "3", "--out", str(out)]
    if resume:
        assert runner.invoke(app, args).exit_code == 0
        (out / pngs(out)[0]).unlink()
    before = sorted(out.iterdir())
    real_access = output.os.access
    # The check itself is what is tested: root (CI containers) may write anywhere, whatever the folder's mode.
    monkeypatch.setattr(output.os, "access", lambda path, mode, **kwargs: Path(path) != out
                        and real_access(path, mode, **kwargs))
    monkeypatch.setattr(builder, "build_pipeline", lambda *a, **k: pytest.fail("loaded the model first"))
    result = runner.invoke(app, [*args, *(["--resume"] if resume else [])])
    assert result.exit_code == 2, result.output
    assert f"Error: cannot write to --out {out}: not writable (permissions or a read-only filesystem)" in result.stderr
    assert sorted(out.iterdir()) == before


@pytest.mark.parametrize("error, code, hint", [(errno.ENOSPC, 1, "free disk space"), (errno.EACCES, 2, "--out DIR")],
                         ids=["disk-full", "permission"])
def test_a_run_record_that_cannot_be_written_is_an_error_not_a_traceback(runner, tmp_path, monkeypatch, error, code,
                                                                         hint):
    """The folder passed the check, then `.nitro-run.json` could not be written (the disk filled up while the
    model loaded): no image was made, and the user is told where and why. A full disk is a run-time failure
    (exit 1, as when it fills up at a later image), not bad usage."""
    from nitro_cli import output

    def cannot_write(path, write, overwrite=False):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(output, "write_atomically", cannot_write)
    result = runner.invoke(app, ["generate", "a cat", *FAST, "--out", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert f"Error: cannot write to --out {tmp_path}: {os.strerror(error)}" in result.stderr
    assert hint in result.stderr.split("Hint:")[1] and pngs(tmp_path) == []


def test_out_of_memory_while_loading_is_exit_1_with_lighter_settings(runner, tmp_path, monkeypatch):
    import torch

    import nitro_cli.builder

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(nitro_cli.builder, "build_pipeline", no_memory)
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "Error: out of GPU memory: CUDA out of memory" in result.output
    assert "--preset lowvram" in result.output and "Traceback" not in result.output


def test_a_one_line_error_is_the_first_line_of_the_message_or_the_type_alone():
    """Libraries' messages run over several lines (the allocator's notes after a CUDA out-of-memory error, YAML's
    marks): an `Error:` line or a bench error row takes the first; a blank message still names what failed."""
    from nitro_cli.errors import describe, first_line

    oom = RuntimeError("\nCUDA out of memory. Tried to allocate 3.00 GiB\nOf the allocated memory 70.1 GiB ...")
    assert first_line(oom) == "CUDA out of memory. Tried to allocate 3.00 GiB"
    assert describe(oom) == "RuntimeError: CUDA out of memory. Tried to allocate 3.00 GiB"
    assert first_line(KeyError()) == "KeyError" and describe(OSError(" ")) == "OSError"


def test_a_log_of_stderr_gets_no_progress_bars(runner, tmp_path):
    """Bars draw only on a terminal: in a log (`2> run.log`, a CI job) each would leave its last frame behind."""
    result = runner.invoke(app, ["generate", "castle", "-n", "2", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith(("images", "steps"))] == []
    assert "Total:" in result.stderr


def test_a_log_of_stderr_gets_no_loading_bars_from_the_libraries(runner, tmp_path, tiny_model_dir):
    """A saved model loads through diffusers and transformers, whose tqdm bars would leave their frames in a log."""
    result = runner.invoke(app, ["generate", "castle", "--out", str(tmp_path), *FAST, "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "Loading" not in result.stderr and "\r" not in result.stderr and "Total:" in result.stderr


def test_a_seed_past_the_generator_range_is_a_usage_error_before_anything_is_written(runner, tmp_path):
    out = tmp_path / "out"
    # The first image's seed fits (2**64 - 1), the second's (seed + 1) does not.
    result = runner.invoke(app, ["generate", "a cat", *FAST, "--seed", str(2**64 - 1), "-n", "2",
                                 "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"seed {2**64} is too large" in result.stderr and "Traceback" not in result.output
    assert not out.exists()
    prompts = write_prompts(tmp_path, "a dog\n--prompt a cat --seed 99999999999999999999999\n")
    result = runner.invoke(app, ["generate", "--prompts-file", str(prompts), *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "prompts file line 2: seed 99999999999999999999999 is too large" in result.stderr
    assert "give a smaller --seed on that line" in result.stderr.replace("\n", " ")
    assert not out.exists()


def test_a_huge_number_of_images_is_a_usage_error_not_a_hang(runner, tmp_path):
    out = tmp_path / "out"
    # Planned image by image before the model loads: this once planned forever and filled memory.
    result = runner.invoke(app, ["generate", "a cat", *FAST, "-n", str(10**20), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"at most {generation.MAX_RUN_IMAGES} images" in result.stderr and "Traceback" not in result.output
    prompts = write_prompts(tmp_path, "a dog\na cat\n")
    result = runner.invoke(app, ["generate", "--prompts-file", str(prompts), *FAST, "-n", "600000", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "not 1200000 (2 prompts x 600000)" in result.stderr
    prompts = write_prompts(tmp_path, "a dog\n--prompt a cat --n_iter 100000 --batch_size 100000\n")
    result = runner.invoke(app, ["generate", "--prompts-file", str(prompts), *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "not 10000000001 (counting the prompts file's --n_iter x --batch_size)" in result.stderr
    assert not out.exists()


def test_a_name_another_run_took_meanwhile_is_never_overwritten(runner, tmp_path, monkeypatch):
    """Two runs into one --out plan the same numbers; with the same seed and prompt the same names too. The
    later writer stops (exit 1) instead of silently replacing the other run's image."""
    out = tmp_path / "out"
    real_run_batch = generation.run_batch

    def other_run_saves_first(*args, **kwargs):
        Image.new("RGB", (8, 8)).save(out / "00000-1-castle.png")  # the other run's image, same name
        return real_run_batch(*args, **kwargs)

    monkeypatch.setattr(generation, "run_batch", other_run_saves_first)
    result = runner.invoke(app, ["generate", "castle", "--seed", "1", "--out", str(out), *FAST])
    theirs = Image.open(out / "00000-1-castle.png")
    assert theirs.size == (8, 8)  # still the other run's
    assert result.exit_code == 1, result.output
    assert "another run is writing to the same --out" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".nitro-run.json", "00000-1-castle.png"]  # no .part left


@pytest.mark.parametrize("failure, code", [(RuntimeError, 1), (KeyboardInterrupt, 130)])
def test_a_run_that_never_loads_its_model_leaves_the_last_run_resumable(runner, tmp_path, monkeypatch, failure, code):
    """A damaged checkpoint (exit 1) or Ctrl-C while loading (130): the interrupted run before it stays resumable."""
    import nitro_cli.builder
    from nitro_cli.errors import RuntimeFailure

    out = tmp_path / "out"
    args = ["generate", "castle", "-n", "2", "--out", str(out), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    (out / pngs(out)[1]).unlink()  # as if the run had been stopped before its last image
    record = (out / ".nitro-run.json").read_bytes()

    def fails_to_load(*args, **kwargs):
        raise RuntimeFailure("model failed to load") if failure is RuntimeError else KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(nitro_cli.builder, "build_pipeline", fails_to_load)
        other = runner.invoke(app, ["generate", "a dragon", "--out", str(out), *FAST])
    assert other.exit_code == code, other.output
    assert (out / ".nitro-run.json").read_bytes() == record
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and "1 of 2 images already" in resumed.stderr and len(pngs(out)) == 2


@pytest.mark.parametrize("damage", ["", '{"fingerprint": "ab', "null", "[]", '{"first_index": "x"}', '{"first_seed": -5}',
                                    "\udcff"])
def test_a_damaged_run_record_is_a_usage_error_and_keeps_the_images(runner, tmp_path, damage):
    out = tmp_path / "out"
    args = ["generate", "castle", "-n", "2", "--out", str(out), *FAST]
    assert runner.invoke(app, args).exit_code == 0
    manifest = out / ".nitro-run.json"
    if damage.startswith('{"first_'):  # the right request, a hand-edited number
        damage = json.dumps({**json.loads(manifest.read_text(encoding="utf-8")), **json.loads(damage)})
    manifest.write_bytes(damage.encode("utf-8", "surrogateescape"))
    before = {name: (out / name).read_bytes() for name in pngs(out)}
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 2, result.output
    assert "is damaged" in result.stderr and "Traceback" not in result.output
    assert {name: (out / name).read_bytes() for name in pngs(out)} == before


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_name_taken_meanwhile_is_never_replaced_and_is_named(tmp_path, monkeypatch, hard_links):
    """FAT and some network shares refuse os.link: the image is then published by a check and a rename. With
    hard links, the error named os.link's source, the temporary file, gone by the time it was told."""
    from nitro_cli import output

    def no_hard_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    if not hard_links:
        monkeypatch.setattr(output.os, "link", no_hard_links)
    path = tmp_path / "00000-1-castle.png"
    output.write_atomically(path, lambda temporary: temporary.write_bytes(b"first"))
    with pytest.raises(FileExistsError) as taken:
        output.write_atomically(path, lambda temporary: temporary.write_bytes(b"second"))
    assert taken.value.filename == str(path)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == [path.name]
