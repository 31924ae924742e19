"""Prompts: Nitro-Diffusion's style tokens, prompt files, and CLIP's 77-token limit.

A prompts file is AUTOMATIC1111's prompts-from-file format: UTF-8, one prompt per line, blank lines
and `#` lines skipped. A line that starts with an option (or has one in it) is a list of options,
parsed like a shell command line:

    --prompt "castle on a cliff" --negative_prompt blurry --seed 5 --steps 20 --cfg_scale 6
    --prompt a princess --style arcane --style disney --width 512 --height 768 --n_iter 4

`--prompt` and `--negative_prompt` take every word up to the next option, quoted or not (as A1111
does); `--style` may repeat and adds to the command line's styles; `--seed -1` is A1111's "random":
the run's seeds; `--n_iter N` and `--batch_size B` make N x B images of the line (a missing one
counts 1) instead of the run's --num-images. Any other line is the prompt, "--" and all ("a sword --
glowing"). A1111's other options are taken where their value asks for what nitro does anyway
(`--restore_faces false`, `--do_not_save_grid true`, `--sampler_name` naming the run's sampler), so
a file written for A1111 runs as it is; any other value is an error saying what nitro does instead.
The whole file is checked before a model is loaded: bad lines are counted and reported with their numbers
(the first `LISTED_AT_MOST` of them).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from nitro_cli.errors import UsageError
from nitro_cli.presets import SAMPLER_NAMES, check_setting, closest

# The model card's tokens; several together give a mixed style.
STYLE_TOKENS = {"archer": "archer style", "arcane": "arcane style", "disney": "modern disney style"}

# A1111's option names -> PromptJob fields checked against the preset's rules for that field.
_SETTING_OPTIONS = {"steps": "steps", "cfg_scale": "guidance", "width": "width", "height": "height"}
_TEXT_OPTIONS = ("prompt", "negative_prompt")
_IMAGE_COUNT_OPTIONS = ("n_iter", "batch_size")  # A1111 makes n_iter batches of batch_size images
LINE_OPTIONS = (*_TEXT_OPTIONS, "seed", *_SETTING_OPTIONS, "style", *_IMAGE_COUNT_OPTIONS, "sampler_name")


# AUTOMATIC1111's other options (scripts/prompts_from_file.py, `prompt_tags`): name -> (how A1111 reads the
# value, which values ask for what nitro does anyway, what nitro does instead of any other value).
_ANY, _NONE = (lambda value: True), (lambda value: False)
_A1111_OPTIONS = {
    "sd_model": (str, _NONE, "a run has one model: give it as --model"),
    "outpath_samples": (str, _NONE, "a run saves every image in its --out: run these lines on their own"),
    "outpath_grids": (str, _ANY, ""),  # nitro makes no grids
    "prompt_for_display": (str, _ANY, ""),  # only what A1111's gallery shows
    "styles": (str, _NONE, "A1111's saved styles (styles.csv) are not in nitro: paste their text into --prompt "
                           f"(nitro's --style takes {', '.join(STYLE_TOKENS)})"),
    "subseed": (int, _ANY, ""),  # used only with a --subseed_strength, which nitro refuses
    "subseed_strength": (float, lambda value: value == 0, "nitro has no variation seeds (make it 0)"),
    "seed_resize_from_w": (int, lambda value: value <= 0, "nitro does not resize seeds (make it 0)"),
    "seed_resize_from_h": (int, lambda value: value <= 0, "nitro does not resize seeds (make it 0)"),
    "sampler_index": (int, _NONE, "give the sampler by name: --sampler_name"),
    "restore_faces": (bool, lambda value: not value, "nitro has no face restoration (make it false)"),
    "tiling": (bool, lambda value: not value, "nitro makes no seamless tiles (make it false)"),
    "do_not_save_samples": (bool, lambda value: not value, "nitro saves every image it makes (make it false)"),
    "do_not_save_grid": (bool, _ANY, ""),  # nitro makes no grids
}
_ALL_OPTIONS = (*LINE_OPTIONS, *_A1111_OPTIONS)


def apply_styles(prompt: str, styles: list[str]) -> str:
    """Append each style's token unless the prompt already has it, as words ("archer styled" is not "archer
    style"); no token twice."""
    result = prompt.strip()
    for style in dict.fromkeys(styles):  # keeps order, drops repeats
        token = STYLE_TOKENS[style]
        if not _has_token(result, token):
            result = f"{result}, {token}" if result else token
    return result


@dataclass(frozen=True)
class PromptJob:
    """One prompt with the settings its images use: the command line's, or a file line's overrides."""

    prompt: str               # styles already applied
    negative: str
    seed: int | None          # the first seed of this prompt's images; None: the run's seed sequence
    steps: int
    guidance: float
    width: int
    height: int
    line: int | None = None   # where it came from in the prompts file
    images: int | None = None  # the line's --n_iter x --batch_size; None: the run's --num-images

    def image_count(self, run_images: int) -> int:
        """How many images this prompt gets in a run that makes `run_images` per prompt."""
        return run_images if self.images is None else self.images


class _BadLine(ValueError):
    pass


def _is_option(word: str) -> bool:
    return word.startswith("--") and word[2:3].isalpha()


def _is_option_line(text: str) -> bool:
    """A1111 takes a line with `--` anywhere for options and, when they don't parse, the whole line for the
    prompt: "a sword -- glowing" is a prompt there, and so here. But a mistyped line of options would be
    drawn into the picture: a line that starts with an option, or names one of the options anywhere
    (`castle --seed 5`), is read as options, and its mistakes are reported."""
    words = text.split()
    return _is_option(words[0]) or any(_is_option(word) and word[2:] in _ALL_OPTIONS for word in words)


def _parse_options(text: str) -> dict[str, object]:
    """A1111's `cmdargs`: `--name value` pairs; prompt texts run to the next option."""
    try:
        words = shlex.split(text)
    except ValueError as exc:  # shlex's only error: an unclosed quote or a trailing backslash
        why = str(exc)
        if why == "No closing quotation" and "'" in text:  # `--prompt a girl's castle`, as A1111 fails too
            why += "; an apostrophe counts as a quote: put the text in double quotes (\"a girl's castle\")"
        raise _BadLine(f"cannot split into options ({why})") from None
    found: dict[str, object] = {"style": []}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise _BadLine(f"'{word}' is not an option; write the prompt as --prompt \"...\"")
        name = word[2:]
        if name not in _ALL_OPTIONS:
            close = closest(name, list(_ALL_OPTIONS))
            guess = f" (did you mean --{close}?)" if close else ""
            raise _BadLine(f"unknown option {word}{guess}; allowed: {', '.join('--' + o for o in LINE_OPTIONS)}")
        values = []
        position += 1
        while position < len(words) and not words[position].startswith("--"):
            values.append(words[position])
            position += 1
        if not values:
            raise _BadLine(f"{word} needs a value")
        if name in _TEXT_OPTIONS:
            found[name] = " ".join(values)
        elif len(values) > 1:
            raise _BadLine(f"{word} takes one value, got {len(values)}: {' '.join(values)} "
                           "(put a value with spaces in quotes)")
        elif name == "style":
            found["style"].append(values[0])
        else:
            found[name] = values[0]
    return found


def _value(option: str, raw: object, kind: type) -> object:
    """An option's text as A1111 reads it (`kind`: str, int, float or bool), or why it can't be."""
    if kind is bool:  # A1111 reads anything but "true" as false; a "True" meant true, so only these two
        if str(raw).lower() not in ("true", "false"):
            raise _BadLine(f"--{option} must be true or false, not '{raw}'")
        return str(raw).lower() == "true"
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise _BadLine(f"--{option} must be {what}, not '{raw}'") from None


def _check_sampler(asked: str, sampler: str) -> None:
    """A line's --sampler_name must be the run's: one run has one scheduler (A1111 reads names in any case)."""
    if asked.lower() == sampler.lower():
        return
    key = next((key for key, name in SAMPLER_NAMES.items() if name.lower() == asked.lower()), None)
    how = (f"for {asked}, run its lines with --set scheduler={key}" if key
           else f"nitro has no {asked}: its samplers are {', '.join(SAMPLER_NAMES.values())}")
    raise _BadLine(f"--sampler_name '{asked}': a run has one sampler, and this run's is {sampler}; {how}")


def parse_line(text: str, defaults: PromptJob, styles: list[str], sampler: str) -> PromptJob:
    """One non-blank, non-comment line on top of the command line's settings (ValueError says why not).
    `sampler`: the run's, by its A1111 name."""
    options = _parse_options(text) if _is_option_line(text) else {"prompt": text.strip(), "style": []}
    changes: dict[str, object] = {}
    if "negative_prompt" in options:
        changes["negative"] = options["negative_prompt"]
    if "seed" in options:
        seed = _value("seed", options["seed"], int)
        if seed < -1:
            raise _BadLine(f"--seed must be 0 or more (or -1: the run's seeds), not {seed}")
        changes["seed"] = None if seed == -1 else seed  # -1 is A1111's "a random seed"
    for option, field in _SETTING_OPTIONS.items():
        if option in options:
            value = _value(option, options[option], float if field == "guidance" else int)
            changes[field] = check_setting(field, value, label=f"--{option}")
    counts = [_value(option, options[option], int) for option in _IMAGE_COUNT_OPTIONS if option in options]
    if counts:
        if min(counts) < 1:
            raise _BadLine("--n_iter and --batch_size must be at least 1")
        changes["images"] = math.prod(counts)
    if "sampler_name" in options:
        _check_sampler(str(options["sampler_name"]), sampler)
    for option, (kind, accepted, instead) in _A1111_OPTIONS.items():
        if option in options and not accepted(_value(option, options[option], kind)):
            raise _BadLine(f"--{option} {options[option]}: {instead}")
    unknown = [s for s in options["style"] if s not in STYLE_TOKENS]
    if unknown:
        raise _BadLine(f"unknown style '{unknown[0]}'; allowed: {', '.join(STYLE_TOKENS)}")
    prompt = str(options.get("prompt", "")).strip()
    if not prompt:
        raise _BadLine("no prompt (add --prompt \"...\")")
    changes["prompt"] = apply_styles(prompt, [*styles, *options["style"]])
    return dataclasses.replace(defaults, **changes)


STDIN = Path("-")  # `--prompts-file -`: the prompts come from standard input
# Far past any list of prompts: a model file or /dev/zero given by mistake stops here, not when memory runs out.
MAX_PROMPTS_FILE_BYTES = 64 * 2**20


def _named(path: Path) -> str:
    return "(standard input)" if path == STDIN else str(path)


def read_prompts_text(path: Path) -> str:
    """The prompts file's text (`STDIN`: standard input's), read once: it may be a pipe (`<(...)`, `-`),
    which a second read finds empty."""
    try:
        if path == STDIN:
            raw = sys.stdin.buffer.read(MAX_PROMPTS_FILE_BYTES + 1)
        else:
            with path.open("rb") as handle:
                raw = handle.read(MAX_PROMPTS_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read prompts file {_named(path)}: {exc.strerror or exc}") from None
    if len(raw) > MAX_PROMPTS_FILE_BYTES:
        raise UsageError(f"prompts file {_named(path)} is over {MAX_PROMPTS_FILE_BYTES // 2**20} MiB: not a prompts file",
                         hint="give a text file with one prompt per line")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16's byte order marks (Notepad's "Unicode")
        raise UsageError(f"prompts file {_named(path)} is UTF-16 text, not UTF-8", hint="save the file as UTF-8")
    # No text has NUL bytes; UTF-16 without a byte order mark is ASCII with one after each letter, which
    # decodes as UTF-8 without an error, into prompts like "c\0a\0s\0t\0l\0e".
    nul = raw.find(b"\0")
    if nul >= 0:
        line = _line_number(raw, nul)
        raise UsageError(f"prompts file {_named(path)}: line {line}: a NUL byte: not UTF-8 text",
                         hint="save the file as UTF-8 (a NUL after each letter is UTF-16)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # exc.start counts in exc.object, the bytes after a UTF-8 byte order mark that utf-8-sig dropped.
        line = _line_number(exc.object, exc.start)
        raise UsageError(f"prompts file {_named(path)}: line {line}: not UTF-8 text ({exc.reason})",
                         hint="save the file as UTF-8") from None


def _line_number(raw: bytes, offset: int) -> int:
    """The line `raw[offset]` is on, counted as _lines counts (a lone \r ends a line too)."""
    return len(_lines(raw[:offset].decode("latin-1")))


def _lines(text: str) -> list[str]:
    """The file's lines as editors number them: split at \n, \r\n or \r only. str.splitlines also splits
    at form feeds, U+0085 and U+2028 (pasted from web pages and word processors), which would cut one
    prompt in two and shift the line numbers of every bad line after it."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


# Bad lines an error lists, and long prompts the warnings quote: one mistake repeated down a 100,000-line file
# (`--negative-prompt`) would list every line, megabytes of stderr that scroll the error's first line away;
# thousands of prompts past 77 tokens would print hundreds of KB of warnings before the first image.
LISTED_AT_MOST = 10


def _listed(items: list[str], more: str) -> list[str]:
    """The first LISTED_AT_MOST items, then a line counting the rest (`more` says what they are)."""
    if len(items) <= LISTED_AT_MOST:
        return items
    return [*items[:LISTED_AT_MOST], f"... and {len(items) - LISTED_AT_MOST} more {more}"]


def parse_prompts(text: str, path: Path, defaults: PromptJob, styles: list[str], sampler: str) -> list[PromptJob]:
    """Every prompt in the text of prompts file `path`, or a UsageError listing its bad lines by number.
    `sampler`: the run's, by its A1111 name (a line's --sampler_name must be it)."""
    jobs, problems = [], []
    for number, line in enumerate(_lines(text), start=1):
        # A byte order mark inside the text starts a file joined on (`cat a.txt b.txt`, both saved by Notepad).
        line = line.lstrip("\ufeff")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            jobs.append(dataclasses.replace(parse_line(line, defaults, styles, sampler), line=number))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} bad lines:\n  " + "\n  ".join(
            _listed(problems, "bad lines"))
        raise UsageError(f"prompts file {_named(path)}: {listed}",
                         hint="fix the lines above; nothing was generated")
    if not jobs:
        raise UsageError(f"prompts file {_named(path)} has no prompts (only blank or # lines)")
    return jobs


QUOTED_MAX_CHARS = 300  # of a dropped end in a warning: a prompts file's line may be megabytes long


def _shortened(text: str) -> str:
    if len(text) <= QUOTED_MAX_CHARS:
        return text
    return f"{text[:QUOTED_MAX_CHARS]}... ({len(text) - QUOTED_MAX_CHARS} more characters)"


def _has_token(text: str, token: str) -> bool:
    return re.search(rf"\b{re.escape(token)}\b", text.lower()) is not None


def _lost_styles(kept: str, dropped: str) -> str:
    """What a warning adds when the cut takes a style token with it: --style appends the token, so on a long
    prompt the style is silently lost, while the image's metadata still shows the token."""
    lost = [token for token in STYLE_TOKENS.values() if _has_token(dropped, token) and not _has_token(kept, token)]
    if not lost:
        return ""
    tokens = " and ".join(repr(token) for token in lost)
    if len(lost) == 1:
        return f"; the style token {tokens} is in that end and has no effect: put it at the start of the prompt"
    return f"; the style tokens {tokens} are in that end and have no effect: put them at the start of the prompt"


def truncation_warnings(tokenizer, jobs: list[PromptJob]) -> list[str]:
    """One warning per distinct prompt or negative prompt longer than the text encoder reads (77 tokens
    for CLIP), quoting the part that is dropped as the user wrote it (decoded tokens would read
    `number 1 0 ,` for `number 10,`); past LISTED_AT_MOST of them, a last one counts the rest."""
    limit = tokenizer.model_max_length
    warnings = []
    texts = dict.fromkeys((text, label) for job in jobs
                          for text, label in ((job.prompt, "prompt"), (job.negative, "negative prompt")) if text)
    for text, label in texts:
        # Offsets of each token in `text`; the start and end tokens count towards the limit.
        offsets = tokenizer(text, return_offsets_mapping=True).offset_mapping
        if len(offsets) > limit:
            cut_at = offsets[limit - 1][0]
            dropped = _shortened(text[cut_at:].strip())
            warnings.append(f"{label} longer than {limit} tokens; this end of it is ignored: \"{dropped}\" "
                            f"(in \"{text[:40]}...\"){_lost_styles(text[:cut_at], text[cut_at:])}")
    return _listed(warnings, f"prompts or negative prompts longer than {limit} tokens, cut short the same way")
