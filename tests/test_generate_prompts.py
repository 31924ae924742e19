"""Prompts files (a file or standard input), seed plans and batch grouping."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from nitro_cli.cli import app
from nitro_cli.errors import UsageError
from nitro_cli.generation import group_batches, plan_images
from nitro_cli.prompts import PromptJob, apply_styles, parse_prompts, read_prompts_text, truncation_warnings
from tests.conftest import FAST

DEFAULTS = PromptJob(prompt="", negative="ugly", seed=None, steps=25, guidance=7.5, width=512, height=512)


def write(tmp_path, text: str, encoding="utf-8"):
    path = tmp_path / "prompts.txt"
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def read_jobs(path, defaults, styles, sampler="Euler a"):
    return parse_prompts(read_prompts_text(path), path, defaults, styles, sampler)


def test_plain_lines_comments_blanks_and_unicode(tmp_path):
    path = write(tmp_path, "\ufeff# my prompts\n\ncastle on a cliff\n   \n  # indented comment\n城堡, 夜晚 ✨\n")
    jobs = read_jobs(path, DEFAULTS, ["arcane"])
    assert [(j.line, j.prompt) for j in jobs] == [(3, "castle on a cliff, arcane style"),
                                                   (6, "城堡, 夜晚 ✨, arcane style")]
    assert all(j.negative == "ugly" and j.seed is None and j.steps == 25 for j in jobs)


def test_byte_order_marks_of_files_joined_with_cat_start_no_line(tmp_path):
    """Two Notepad files joined (`cat a.txt b.txt`): the second's byte order mark turned its `# comment` into a
    prompt, stayed in a plain prompt (3 more CLIP tokens: another picture) and hid an option line's first option."""
    path = write(tmp_path, "\ufeff# set A\ncastle\n\ufeff# set B: towers\n\ufefftower\n\ufeff--prompt bridge --seed 5\n")
    jobs = read_jobs(path, DEFAULTS, [])
    assert [(j.line, j.prompt, j.seed) for j in jobs] == [(2, "castle", None), (4, "tower", None), (5, "bridge", 5)]


def test_a_style_token_inside_another_word_is_not_the_style():
    assert apply_styles("archer styled castle", ["archer"]) == "archer styled castle, archer style"
    assert apply_styles("marcher style parade", ["archer"]) == "marcher style parade, archer style"
    assert apply_styles("castle, Archer Style", ["archer"]) == "castle, Archer Style"


def test_a1111_overrides_on_a_line(tmp_path):
    line = ('--prompt a castle --negative_prompt "blurry, dark" --seed 5 --steps 20 --cfg_scale 6.5 '
            '--width 512 --height 768 --style arcane --style disney --style archer')
    [job] = read_jobs(write(tmp_path, line + "\n"), DEFAULTS, ["archer"])
    assert job == PromptJob(prompt="a castle, archer style, arcane style, modern disney style", negative="blurry, dark",
                            seed=5, steps=20, guidance=6.5, width=512, height=768, line=1)


def test_a_file_written_for_a1111_runs_as_it_is(tmp_path):
    """AUTOMATIC1111's options (scripts/prompts_from_file.py) whose values ask for what nitro does anyway are
    taken; --seed -1 is A1111's random seed (the run's seeds); --n_iter x --batch_size images of the line."""
    path = write(tmp_path, '--prompt "castle, at dawn" --negative_prompt "blurry" --steps 20 --cfg_scale 7 '
                           '--sampler_name "euler a" --seed -1 --width 512 --height 512 --restore_faces false '
                           '--tiling False --do_not_save_grid true --do_not_save_samples false '
                           '--outpath_grids outputs/grids --prompt_for_display castle --subseed 12 '
                           '--subseed_strength 0 --seed_resize_from_w -1 --seed_resize_from_h 0 '
                           '--n_iter 3 --batch_size 2\r\n'
                           '--prompt tower --seed 9 --n_iter 2\r\n')
    first, second = read_jobs(path, DEFAULTS, [])
    assert first == PromptJob(prompt="castle, at dawn", negative="blurry", seed=None, steps=20, guidance=7.0,
                              width=512, height=512, line=1, images=6)
    assert (second.prompt, second.seed, second.images) == ("tower", 9, 2)
    planned = plan_images([first, second, DEFAULTS], 2, first_index=0, first_seed=40)
    assert [p.seed for p in planned] == [40, 41, 42, 43, 44, 45, 9, 10, 48, 49]


@pytest.mark.parametrize("line", ["a sword -- glowing", "a knight's blade -- sharp", "---- castle ----",
                                  "em--dash --and more", "-- a lone dash"])
def test_a_line_with_dashes_but_no_option_is_the_prompt(tmp_path, line):
    """A1111 falls back to the whole line as the prompt; nitro reads it so at once."""
    [job] = read_jobs(write(tmp_path, line + "\n"), DEFAULTS, [])
    assert job.prompt == line


@pytest.mark.parametrize("line, problem", [
    ("--prompt castle --sed 5", "unknown option --sed (did you mean --seed?)"),
    ("--prompt castle --seed", "--seed needs a value"),
    ("--prompt castle --seed five", "--seed must be a whole number, not 'five'"),
    ("--prompt castle --seed -2", "--seed must be 0 or more (or -1: the run's seeds), not -2"),
    ("--prompt castle --seed 1 2", "--seed takes one value"),
    ("--prompt castle --steps 0", "'--steps' must be at least 1"),
    ("--prompt castle --cfg_scale high", "--cfg_scale must be a number"),
    ("--prompt castle --cfg_scale nan", "'--cfg_scale' must be a number, not nan"),
    ("--prompt castle --width 500", "'--width' must be a multiple of 8"),
    ('--prompt "castle', "cannot split into options"),
    ("--prompt a girl's castle --seed 5", "cannot split into options (No closing quotation; an apostrophe counts as "
                                          "a quote: put the text in double quotes"),
    ("castle --seed 5", "'castle' is not an option"),
    ("--prompt castle --style pixar", "unknown style 'pixar'"),
    ("--seed 5 --steps 10", "no prompt"),
    # A1111's own options, where nitro can't do what their value asks:
    ('--prompt c --sampler_name "DPM++ 2M Karras"',
     "--sampler_name 'DPM++ 2M Karras': a run has one sampler, and this run's is Euler a; "
     "for DPM++ 2M Karras, run its lines with --set scheduler=dpmpp_2m_karras"),
    ("--prompt c --sampler_name Heun", "--sampler_name 'Heun': a run has one sampler, and this run's is Euler a; nitro has no Heun: its "
     "samplers are PLMS, Euler a, Euler, "),
    ("--prompt c --sampler_name DPM++ 2M", "--sampler_name takes one value, got 2: DPM++ 2M (put a value with"),
    ("--prompt c --sampler_index 3", "--sampler_index 3: give the sampler by name: --sampler_name"),
    ("--prompt c --restore_faces true", "--restore_faces true: nitro has no face restoration (make it false)"),
    ("--prompt c --restore_faces yes", "--restore_faces must be true or false, not 'yes'"),
    ("--prompt c --tiling True", "--tiling True: nitro makes no seamless tiles"),
    ("--prompt c --do_not_save_samples true", "--do_not_save_samples true: nitro saves every image it makes"),
    ('--prompt c --styles "Cinematic"', "--styles Cinematic: A1111's saved styles (styles.csv) are not in nitro"),
    ("--prompt c --sd_model v1-5-pruned", "--sd_model v1-5-pruned: a run has one model: give it as --model"),
    ("--prompt c --outpath_samples /x", "--outpath_samples /x: a run saves every image in its --out"),
    ("--prompt c --subseed_strength 0.3", "--subseed_strength 0.3: nitro has no variation seeds"),
    ("--prompt c --seed_resize_from_w 768", "--seed_resize_from_w 768: nitro does not resize seeds"),
    ("--prompt c --n_iter 0", "--n_iter and --batch_size must be at least 1"),
    ("--prompt c --batch_size two", "--batch_size must be a whole number, not 'two'"),
    ("--prompt c --stles x", "unknown option --stles (did you mean --styles?)"),
])
def test_each_kind_of_bad_line_names_its_number(tmp_path, line, problem):
    path = write(tmp_path, f"# header\ngood prompt\n{line}\n")
    with pytest.raises(UsageError) as caught:
        read_jobs(path, DEFAULTS, [])
    assert "line 3: " in caught.value.message
    assert problem in caught.value.message


def test_every_bad_line_is_reported_at_once(tmp_path):
    path = write(tmp_path, "--steps x --prompt a\nfine\n--bogus 1\n")
    with pytest.raises(UsageError) as caught:
        read_jobs(path, DEFAULTS, [])
    assert "line 1: --steps must be a whole number" in caught.value.message
    assert "line 3: unknown option --bogus" in caught.value.message


def test_a_typo_repeated_on_every_line_of_a_big_file_is_a_short_error(tmp_path):
    """The same mistake on each of 5,000 lines (a big prompts file with `--negative-prompt` for
    `--negative_prompt`) is told by its first lines and a count, not 5,000 lines of stderr."""
    path = write(tmp_path, "".join(f"--prompt castle {i} --negative-prompt blurry\n" for i in range(5000)))
    with pytest.raises(UsageError) as caught:
        read_jobs(path, DEFAULTS, [])
    message = caught.value.message
    assert "5000 bad lines" in message
    assert "line 1: unknown option --negative-prompt (did you mean --negative_prompt?)" in message
    assert "line 5000:" not in message and "and 4990 more bad lines" in message
    assert len(message.splitlines()) <= 12


def test_not_utf8_and_empty_files(tmp_path):
    with pytest.raises(UsageError, match="line 2: not UTF-8"):
        read_jobs(write(tmp_path, "castle\ncaf\xe9\n".encode("latin-1")), DEFAULTS, [])
    with pytest.raises(UsageError, match="no prompts"):
        read_jobs(write(tmp_path, "# only a comment\n\n"), DEFAULTS, [])
    with pytest.raises(UsageError, match="cannot read prompts file"):
        read_jobs(tmp_path / "missing.txt", DEFAULTS, [])


@pytest.mark.parametrize("data, problem", [
    ("castle\r\nprincess\r\n".encode("utf-16-le"), "line 1: a NUL byte"),  # UTF-16 without a byte order mark
    ("castle\nprincess\n".encode("utf-16"), "is UTF-16 text"),
    ("\ufeffcastle\n".encode("utf-16-be"), "is UTF-16 text"),
    (b"castle\nab\x00cd\n", "line 2: a NUL byte"),
    (b"castle\rsea\r\nab\x00cd\r", "line 3: a NUL byte"),  # classic Mac line ends count as lines too
    (b"castle\rcaf\xe9\r", "line 2: not UTF-8"),
    (b"\xef\xbb\xbfa\n\xe9\n", "line 2: not UTF-8"),  # the UTF-8 byte order mark counts in no offset
], ids=["utf16-no-bom", "utf16-bom", "utf16-be-bom", "nul", "nul-cr", "latin1-cr", "latin1-after-utf8-bom"])
def test_utf16_and_nul_bytes_are_not_read_as_prompts(tmp_path, data, problem):
    with pytest.raises(UsageError, match=problem):
        read_jobs(write(tmp_path, data), DEFAULTS, [])


def test_only_line_breaks_end_a_line(tmp_path):
    """A form feed or U+2028 (pasted from a web page) inside a prompt keeps the prompt whole and the line
    numbers those of an editor; \r\n and a lone \r end lines."""
    path = write(tmp_path, "castle\u2028at night\r\nsea\x0cshore\rforest\n--prompt x --steps many\n")
    with pytest.raises(UsageError, match="prompts file .*: line 4: --steps must be a whole number"):
        read_jobs(path, DEFAULTS, [])
    jobs = read_jobs(write(tmp_path, "castle\u2028at night\r\nsea\x0cshore\rforest\n"), DEFAULTS, [])
    assert [(j.line, j.prompt) for j in jobs] == [(1, "castle\u2028at night"), (2, "sea\x0cshore"), (3, "forest")]


def test_a_file_too_large_for_prompts_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr("nitro_cli.prompts.MAX_PROMPTS_FILE_BYTES", 1000)
    path = write(tmp_path, "castle\n" * 200)
    with pytest.raises(UsageError, match="prompts.txt is over .* MiB: not a prompts file"):
        read_jobs(path, DEFAULTS, [])
    if os.path.exists("/dev/zero"):  # endless: read whole, it filled memory
        with pytest.raises(UsageError, match="not a prompts file"):
            read_prompts_text(Path("/dev/zero"))


def test_bad_file_exits_2_before_any_model_loads(runner, tmp_path, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompts file was checked")

    monkeypatch.setattr("nitro_cli.builder.build_pipeline", must_not_load)
    path = write(tmp_path, "castle\n--prompt x --steps many\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--prompts-file", str(path), "--out", str(out), "--model", "random:tiny"])
    assert result.exit_code == 2
    assert "line 2: --steps must be a whole number" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("given, told", [(["x", "--prompts-file", "prompts.txt"], "not both"), ([], "--prompts-file"),
                                         (["  "], "--prompts-file")], ids=["both", "neither", "blank-prompt"])
def test_prompt_and_prompts_file_are_exclusive(runner, tmp_path, monkeypatch, given, told):
    """A blank prompt (a script's `"$PROMPT"`, the variable unset) is no prompt, not an image of nothing."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "castle\n")
    result = runner.invoke(app, ["generate", *given, *FAST, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"Error: give either a prompt or --prompts-file{', not both' if told == 'not both' else ''}\n" in result.stderr
    assert not (tmp_path / "out").exists()


def test_truncation_warning_shows_the_dropped_end_once_per_prompt():
    from nitro_cli.models import clip_tokenizer

    long = " ".join(f"word{i}" for i in range(60)) + " lighthouse at the end"
    jobs = [PromptJob(long, "", None, 2, 7.5, 64, 64)] * 3 + [PromptJob("short castle", "", None, 2, 7.5, 64, 64)]
    warnings = truncation_warnings(clip_tokenizer(), jobs)
    assert len(warnings) == 1
    assert "lighthouse at the end" in warnings[0] and "77 tokens" in warnings[0]


def test_truncation_warning_names_the_negative_prompt():
    from nitro_cli.models import clip_tokenizer

    long = " ".join(f"word{i}" for i in range(60)) + " lighthouse at the end"
    [warning] = truncation_warnings(clip_tokenizer(), [PromptJob("short castle", long, None, 2, 7.5, 64, 64)])
    assert warning.startswith("negative prompt longer than 77 tokens")


def test_truncation_warning_quotes_the_dropped_end_as_written():
    from nitro_cli.models import clip_tokenizer

    long = ", ".join(f"tower number {i}" for i in range(30))
    [warning] = truncation_warnings(clip_tokenizer(), [PromptJob(long, "", None, 2, 7.5, 64, 64)])
    assert "tower number 28, tower number 29\"" in warning


def test_truncation_warning_quotes_from_the_first_token_dropped():
    """CLIP reads 77 tokens, its start and end tokens among them: 75 of the prompt's."""
    from nitro_cli.models import clip_tokenizer

    [warning] = truncation_warnings(clip_tokenizer(), [PromptJob("castle " * 75 + "lighthouse tower", "", None, 2, 7.5,
                                                                 64, 64)])
    assert 'this end of it is ignored: "lighthouse tower" (in' in warning


@pytest.mark.parametrize("prompt, lost", [(", ".join(f"tower {i}" for i in range(40)) + ", arcane style", True),
                                          ("arcane style, " + ", ".join(f"tower {i}" for i in range(40)), False)],
                         ids=["appended", "at-the-start"])
def test_truncation_warning_names_a_style_token_the_cut_drops(prompt, lost):
    """`--style` appends its token: on a prompt past 77 tokens the style had no effect (the image was the same as
    without it) while the metadata showed the token, and the warning quoted only the dropped end's start."""
    from nitro_cli.models import clip_tokenizer

    [warning] = truncation_warnings(clip_tokenizer(), [PromptJob(prompt, "", None, 2, 7.5, 64, 64)])
    assert ("the style token 'arcane style' is in that end and has no effect: put it at the start of the prompt"
            in warning) is lost


def test_truncation_warning_of_a_huge_prompt_stays_short():
    """A prompts file's line of megabytes was quoted whole on stderr."""
    from nitro_cli.models import clip_tokenizer

    long = "castle " * 20000
    [warning] = truncation_warnings(clip_tokenizer(), [PromptJob(long, "", None, 2, 7.5, 64, 64)])
    assert len(warning) < 500 and "more characters)" in warning


def test_truncation_warnings_of_a_big_prompts_file_stay_a_few_lines():
    """A1111 prompts often run past 77 tokens: 3,000 such lines printed 3,000 warnings (657 KB of stderr)
    before the first image. The first few are quoted and the rest counted."""
    from nitro_cli.models import clip_tokenizer

    jobs = [PromptJob(" ".join(f"word{i}" for i in range(60)) + f" end {n}", "", None, 2, 7.5, 64, 64)
            for n in range(300)]
    warnings = truncation_warnings(clip_tokenizer(), jobs)
    assert len(warnings) == 11
    assert "end 0\"" in warnings[0] and "end 9\"" in warnings[9]
    assert warnings[10] == "... and 290 more prompts or negative prompts longer than 77 tokens, cut short the same way"


def test_plan_seeds_and_names_in_prompt_order():
    a = PromptJob("a", "", None, 2, 7.5, 64, 64)
    b = PromptJob("b", "", 100, 2, 7.5, 64, 64)  # a line with --seed 100
    planned = plan_images([a, b, a], 2, first_index=7, first_seed=40)
    assert [p.seed for p in planned] == [40, 41, 100, 101, 44, 45]
    assert [p.name for p in planned] == ["00007-40-a.png", "00008-41-a.png", "00009-100-b.png", "00010-101-b.png",
                                         "00011-44-a.png", "00012-45-a.png"]


def test_file_names_are_never_slugless_and_stay_short():
    """A prompt of no letters or digits still names its file; a long one is cut, so that the name stays far
    under the 255 bytes a file name may have."""
    jobs = [PromptJob("!!! ???", "", None, 2, 7.5, 64, 64), PromptJob("a castle " * 100, "", None, 2, 7.5, 64, 64)]
    assert [p.name for p in plan_images(jobs, 1, first_index=0, first_seed=3)] == [
        "00000-3-image.png", "00001-4-a-castle-a-castle-a-castle-a-castle-a-castle-a-c.png"]


def test_a_line_with_seed_0_starts_at_seed_0(tmp_path):
    """0 is a seed like any other, not "no seed given"."""
    [job] = read_jobs(write(tmp_path, "--prompt castle --seed 0 --n_iter 2\n"), DEFAULTS, [])
    assert [p.name for p in plan_images([job], 1, first_index=0, first_seed=40)] == ["00000-0-castle.png",
                                                                                    "00001-1-castle.png"]


def test_a_big_run_is_planned_once_with_one_slug_per_prompt(monkeypatch):
    """Planning runs before the model loads, over every image: seeds were checked by planning the whole run a
    second time, and each image's name ran the prompt's slug regex again (`-n 1000000` of one prompt: 13 s
    and 18 s of the 2-vCPU dev machine's time)."""
    from nitro_cli import generation, output

    slugged = []
    for module in (generation, output):  # wherever planning takes it from
        monkeypatch.setattr(module, "slug", lambda prompt: slugged.append(prompt) or prompt, raising=False)
    jobs = [PromptJob("castle", "", None, 2, 7.5, 64, 64), PromptJob("dragon", "", 5, 2, 7.5, 64, 64)]
    generation.check_seeds(jobs, 1000, seed=None)
    assert slugged == []
    planned = plan_images(jobs, 1000, first_index=0, first_seed=0)
    assert len(planned) == 2000 and slugged == ["castle", "dragon"]
    assert (planned[999].name, planned[1999].name) == ("00999-999-castle.png", "01999-1004-dragon.png")


def test_the_seed_check_names_the_first_seed_past_the_range():
    from nitro_cli.generation import SEED_MAX, check_seeds

    jobs = [PromptJob("a", "", None, 2, 7.5, 64, 64), PromptJob("b", "", None, 2, 7.5, 64, 64)]
    check_seeds(jobs, 3, seed=SEED_MAX - 5)  # the last image's seed is SEED_MAX
    # a: SEED_MAX - 4 .. SEED_MAX - 2; b: SEED_MAX - 1, SEED_MAX, SEED_MAX + 1
    with pytest.raises(UsageError, match=f"^seed {SEED_MAX + 1} is too large"):
        check_seeds(jobs, 3, seed=SEED_MAX - 4)


def test_batches_cross_prompts_but_never_mix_sizes_or_steps():
    small, other, tall = (PromptJob("s", "", None, 2, 7.5, 64, 64), PromptJob("o", "", None, 2, 7.5, 64, 64),
                          PromptJob("t", "", None, 2, 7.5, 64, 128))
    planned = plan_images([small, tall, other], 2, 0, 0)
    batches = group_batches(planned, 3)
    assert [[p.job.prompt for p in batch] for batch in batches] == [["s", "s", "o"], ["o"], ["t", "t"]]


@pytest.mark.parametrize("field, value", [("width", 128), ("height", 128), ("steps", 3), ("guidance", 5.0)])
def test_a_line_with_its_own_setting_is_never_batched_with_other_lines(field, value):
    """A pipeline call has one size, step count and CFG scale: a line's own `--width`, `--steps` or `--cfg_scale`
    batched with other lines would be made with theirs, and its file would say otherwise."""
    plain = PromptJob("p", "", None, 2, 7.5, 64, 64)
    own = dataclasses.replace(plain, prompt="own", **{field: value})
    batches = group_batches(plan_images([plain, own, plain], 1, 0, 0), 3)
    assert [[p.job.prompt for p in batch] for batch in batches] == [["p", "p"], ["own"]]


def test_a_style_already_in_the_prompt_is_not_added_again(tmp_path):
    """`--style` adds its token unless the prompt has it already, in any case."""
    path = write(tmp_path, "castle, Arcane Style\n--prompt knight, modern disney style --style disney\n")
    jobs = read_jobs(path, DEFAULTS, ["arcane"])
    assert [j.prompt for j in jobs] == ["castle, Arcane Style", "knight, modern disney style, arcane style"]


def test_prompts_from_standard_input(runner, tmp_path):
    result = runner.invoke(app, ["generate", "--prompts-file", "-", *FAST, "--out", str(tmp_path), "--json"],
                           input="# piped in\ncastle\n--prompt dragon --seed 3\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["prompt"], line["seed"]) for line in lines][1] == ("dragon", 3)
    assert lines[0]["prompt"] == "castle" and len(list(tmp_path.glob("*.png"))) == 2
    bad = runner.invoke(app, ["generate", "-f", "-", *FAST, "--out", str(tmp_path)], input="castle\n--bogus 1\n")
    assert bad.exit_code == 2 and "prompts file (standard input): line 2: unknown option --bogus" in bad.stderr


def test_standard_input_is_refused_when_several_processes_share_the_run(runner, tmp_path, monkeypatch):
    from nitro_cli import distributed

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)  # as torchrun and accelerate launch set them
    # Joined to no other process: the check runs as in the main process of a launch.
    monkeypatch.setattr(distributed, "_PartialStateProcesses", lambda cpu: distributed.Processes())
    result = runner.invoke(app, ["generate", "-f", "-", *FAST, "--out", str(tmp_path)], input="castle\n")
    assert result.exit_code == 2 and "reaches only one of the processes" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a1111_line_options_reach_the_run(runner, tmp_path):
    """The run's sampler (its preset's scheduler) is what a line's --sampler_name is checked against, and a
    line's --n_iter x --batch_size is its number of images."""
    prompts = write(tmp_path, '--prompt castle --sampler_name "Euler a" --seed 3 --n_iter 2\ntower --- at night\n')
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "-f", str(prompts), *FAST, "--seed", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-3-castle.png", "00001-4-castle.png",
                                                         "00002-12-tower-at-night.png"]
    other = runner.invoke(app, ["generate", "-f", str(prompts), *FAST, "--set", "scheduler=ddim", "--out", str(out)])
    assert other.exit_code == 2
    assert "line 1: --sampler_name 'Euler a': a run has one sampler, and this run's is DDIM" in other.stderr


def test_the_style_option_offers_the_styles_prompts_know():
    """`--style` is an enum in the command (its module must not import prompts, for a fast --help); prompts
    maps each style to its token. A style added to one alone would be refused or have no token."""
    from nitro_cli.commands.generate import Style
    from nitro_cli.prompts import STYLE_TOKENS

    assert [style.value for style in Style] == list(STYLE_TOKENS)
