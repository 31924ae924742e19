"""Image files: names that sort in prompt order, AUTOMATIC1111 infotext, writes no reader sees half-done.

Names are `NNNNN-SEED-slug.png`. How a run's names stay reproducible, so that `--resume` finds them:
a run writes a small manifest, `.nitro-run.json`, in its output folder once its model has loaded, before its first image, holding
a fingerprint of the request (model, preset settings except batch size, prompts, images per prompt,
`--seed`), the first free file number it started at and its first seed (drawn at random when `--seed`
was not given). Image i of the run (in prompt order) is then number `first_index + i` with the seed the
plan gives it from `first_seed`. `--resume` reads the manifest back, checks that the fingerprint matches,
rebuilds the same plan and generates only the names that are not on disk. A new run (without `--resume`)
starts past the highest number in the folder, so it never overwrites anything, and replaces the manifest.
Batch size is left out of the fingerprint: batching does not change pixels, so after an out-of-memory
error a run can be resumed with a smaller batch.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nitro_cli import __version__, paths
from nitro_cli.errors import NitroError, RuntimeFailure, UsageError

MANIFEST_NAME = ".nitro-run.json"
SEED_LIMIT = 2**32  # drawn seeds stay in A1111's range, so they can be typed back into it

# Five digits at least: past 99999 the numbers simply grow (`100000-...`), and still count.
NAME_PATTERN = re.compile(r"^(\d{5,})-(\d+)-.*\.png$")


# A file name's prompt part: long enough to tell prompts apart in a listing, short enough for any file system.
SLUG_LENGTH = 48


def slug(prompt: str) -> str:
    text = re.sub(r"[^\w]+", "-", prompt.lower(), flags=re.UNICODE).strip("-")
    return text[:SLUG_LENGTH].rstrip("-") or "image"


def next_index(folder: Path) -> int:
    """One past the highest `NNNNN-` number in `folder`, so new files never overwrite old ones."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := NAME_PATTERN.match(p.name))]
    return max(numbers, default=-1) + 1


def image_name(index: int, seed: int, prompt_slug: str) -> str:
    """`prompt_slug`: `slug(prompt)`, made once for all the images of a prompt."""
    return f"{index:05d}-{seed}-{prompt_slug}.png"


def _quote(value: str) -> str:
    """AUTOMATIC1111's quoting: values with commas, colons or newlines become JSON strings. So does one that
    starts with a quote: A1111's reader takes a value between quotes (a model folder named `"best"`) for a
    JSON string and would drop them."""
    text = str(value)
    quoted = any(c in text for c in ",:\n") or text.startswith('"')
    return json.dumps(text, ensure_ascii=False) if quoted else text


# A line break, and the blank space after it, before a line that A1111's reader would take for the start of
# the negative prompt (it strips each line, then looks for this at its start).
_BEFORE_NEGATIVE_PROMPT_LINE = re.compile(r"\n\s*(?=Negative prompt:)")


def _readable_by_a1111(text: str) -> str:
    """A prompt with a line starting `Negative prompt:` would be cut there by A1111's reader; CLIP's tokenizer
    reads any run of blank space as one space, so joining that line to the one before it gives the text
    that made the image, read back right."""
    return _BEFORE_NEGATIVE_PROMPT_LINE.sub(" ", text)


def infotext(prompt: str, negative: str, params: dict[str, object]) -> str:
    """The `parameters` text A1111 writes: prompt, `Negative prompt:` line, then `Key: value, ...`."""
    lines = [_readable_by_a1111(prompt)]
    if negative:
        lines.append(f"Negative prompt: {_readable_by_a1111(negative)}")
    params = {**params, "Version": f"nitro {__version__}"}
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value is not None))
    return "\n".join(lines)


def _temporary_path(path: Path) -> Path:
    """`.NAME.PID-RANDOM.part` beside `path`: this writer's own name (process id and a random part), so two
    runs writing the same name at once never write into one file. TEMPORARY_PATTERN matches it."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


TEMPORARY_PATTERN = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.part$")


def write_atomically(path: Path, write, overwrite: bool = False) -> None:
    """`write(temporary)` to a hidden name in the same folder, then rename: readers see all or nothing,
    and an interruption leaves no partial file behind. Unless `overwrite`, an existing `path` is never
    replaced: FileExistsError (another run took the name)."""
    temporary = _temporary_path(path)
    try:
        write(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            _publish_new(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _publish_new(temporary: Path, path: Path) -> None:
    """`temporary` under the name `path`, which must not exist yet. A hard link does it in one step that fails
    on an existing name (a rename would silently replace it, and checking first leaves a window for another
    run); a filesystem without hard links (FAT, some network shares) gets the check and the rename."""
    try:
        os.link(temporary, path)
    except FileExistsError:  # os.link's error names its source, the temporary file: the name taken is `path`
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError:  # no hard links here
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(temporary, path)


def remove_stale_temporaries(folder: Path) -> None:
    """The temporary files killed runs left in `folder` (SIGKILL, the OOM killer, a power cut): writing one takes
    well under a second, so one older than paths.STALE_SECONDS is a leftover."""
    cutoff = time.time() - paths.STALE_SECONDS
    for path in folder.glob(".*.part"):
        try:
            if TEMPORARY_PATTERN.match(path.name) and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:  # removed meanwhile, or not this user's to remove: it only takes space
            pass


def save_png(image, path: Path, parameters: str) -> None:
    """The image as a PNG with A1111's `parameters` text chunk, written atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    write_atomically(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=info))


# Preset fields the parameters already give under A1111's own names (Steps, CFG scale, Size).
FIELDS_WITH_THEIR_OWN_PARAMETER = ("steps", "guidance", "width", "height")


def preset_overrides(overrides: tuple[str, ...]) -> str | None:
    """The `--set` pairs that changed the preset, for the parameters: with the preset's name they say how the
    image was made (precision, scheduler, ... change its pixels). None when there are none to add."""
    shown = [pair.strip() for pair in overrides
             if pair.partition("=")[0].strip() not in FIELDS_WITH_THEIR_OWN_PARAMETER]
    return "; ".join(shown) or None


def save_image(planned, image, *, folder: Path, sampler: str, schedule_type: str | None, model: str, preset: str,
               overrides: tuple[str, ...]) -> Path:
    """One planned image (a generation.PlannedImage) with its A1111 parameters, written atomically.
    `schedule_type`: A1111's name for the sampler's noise schedule, where its name alone would be misread."""
    job, path = planned.job, folder / planned.name
    save_png(image, path, infotext(job.prompt, job.negative, {
        "Steps": job.steps, "Sampler": sampler, "Schedule type": schedule_type, "CFG scale": job.guidance,
        "Seed": planned.seed,
        "Size": f"{job.width}x{job.height}", "Model": model, "Preset": preset,
        "Preset overrides": preset_overrides(overrides),
    }))
    return path


@dataclass(frozen=True)
class RunRecord:
    """What `.nitro-run.json` holds: enough to rebuild a run's names and seeds."""

    fingerprint: str
    first_index: int
    first_seed: int
    images: int


def fingerprint(request: dict) -> str:
    """A short stable hash of everything that decides a run's images (JSON-able values only)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_record(manifest: Path) -> RunRecord:
    """The record in `manifest`, its fields checked: a hand-edited or foreign file is "damaged" (a UsageError),
    not a traceback in the middle of planning. ValueError or TypeError when it is not a record."""
    record = RunRecord(**json.loads(manifest.read_text(encoding="utf-8")))
    numbers = (record.first_index, record.first_seed, record.images)
    if not isinstance(record.fingerprint, str) or not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("a field has the wrong type or a negative number")
    return record


def _check_writable(folder: Path) -> None:
    if not os.access(folder, os.W_OK):
        raise _unwritable(folder, "not writable (permissions or a read-only filesystem)")


def start_run(folder: Path, request_fingerprint: str, images: int, seed: int | None, resume: bool) -> RunRecord:
    """The run's first file number and first seed: read back for `--resume`, else fresh (`record_run` writes
    them down once the model has loaded). Temporary files killed runs left in the folder are removed."""
    manifest = folder / MANIFEST_NAME
    if resume:
        if not manifest.is_file():
            raise UsageError(f"--resume: no earlier run recorded in {folder}",
                             hint="run the command without --resume to start one")
        try:
            record = _read_record(manifest)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--resume: {manifest} is damaged ({exc})",
                             hint="run the command without --resume to start a new run") from None
        if record.fingerprint != request_fingerprint:
            raise UsageError(f"--resume: the last run in {folder} was a different request "
                             "(prompts, seed, images per prompt, model or preset differ)",
                             hint="repeat the interrupted command exactly, plus --resume; or drop --resume")
        _check_writable(folder)  # now, not when the first image is saved after the model's load
        remove_stale_temporaries(folder)
        return record
    first_seed = seed if seed is not None else random.randrange(SEED_LIMIT - images)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # --out is a file, or under a folder this user can't write to
        raise _write_failure(folder, exc) from None
    _check_writable(folder)
    remove_stale_temporaries(folder)
    return RunRecord(request_fingerprint, next_index(folder), first_seed, images)


def record_run(folder: Path, record: RunRecord) -> None:
    """A new run's record, replacing the last one's. Written once the model has loaded, just before the first
    image: a run that fails to load (a damaged checkpoint) or is stopped while loading leaves the record of
    the run before it, which can then still be resumed."""
    try:
        write_atomically(folder / MANIFEST_NAME,
                         lambda temporary: temporary.write_text(json.dumps(dataclasses.asdict(record)),
                                                                encoding="utf-8"),
                         overwrite=True)
    except OSError as exc:
        raise _write_failure(folder, exc) from None


def _file_in_the_way(folder: Path) -> str | None:
    """Which file (or link to nothing) stands where `folder` or a folder above it should be: mkdir says only "File
    exists" (or "Not a directory"), which reads as if the folder were there."""
    for path in (folder, *folder.parents):
        if path.is_symlink() and not path.exists():  # mkdir says "File exists" for it too
            return f"{path} is a symbolic link to {os.readlink(path)}, which is not there"
        if path.exists():
            return None if path.is_dir() else f"{path} is a file, not a folder"
    return None


# The disk failed the write, not the choice of folder: a run-time failure (exit 1), as when it fills up later.
_DISK_ERRORS = (errno.ENOSPC, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC))


def _write_failure(folder: Path, exc: OSError) -> NitroError:
    if exc.errno in _DISK_ERRORS:
        return RuntimeFailure(f"cannot write to --out {folder}: {exc.strerror or exc}",
                              hint="free disk space, or give --out DIR on another disk")
    return _unwritable(folder, _file_in_the_way(folder) or exc.strerror or str(exc))


def _unwritable(folder: Path, why: str) -> UsageError:
    return UsageError(f"cannot write to --out {folder}: {why}", hint="give a folder you can write to with --out DIR")
