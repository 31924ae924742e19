"""Options shared by several commands, declared once (Typer `Annotated` aliases)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nitro_cli.errors import UsageError
from nitro_cli.models import DEFAULT_MODEL
from nitro_cli.vram import is_budget


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="MODEL", show_default=DEFAULT_MODEL,
    help="Hub id (owner/name), diffusers folder, .safetensors/.ckpt file, or random:tiny / random:sd15.")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override one preset field (repeatable; dotted keys for groups, e.g. vae.tiling=true).")]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where to run: the first CUDA GPU if any (auto), or force one.")]
StepsOption = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (overrides the preset).")]
WidthOption = Annotated[Optional[int], typer.Option("--width", help="Image width, a multiple of 8 (overrides the preset).")]
HeightOption = Annotated[Optional[int], typer.Option("--height", help="Image height, a multiple of 8 (overrides the preset).")]
BatchSizeOption = Annotated[Optional[int], typer.Option("--batch-size", help="Images per pipeline call (overrides the preset).")]
MaxVramOption = Annotated[Optional[float], typer.Option(
    "--max-vram", metavar="GIB",
    help="GPU memory budget in GiB: without --preset, the fastest preset expected to fit; with one, the "
         "settings it needs to fit (CPU offload, VAE tiling, smaller weights). Estimated from measured peaks "
         "(nitro_cli/vram.py); says on stderr what it chose.")]
BenchMaxVramOption = Annotated[Optional[float], typer.Option(
    "--max-vram", metavar="GIB",
    help="GPU memory budget in GiB: each preset gets the settings it needs to fit (CPU offload, VAE tiling, "
         "smaller weights); one that can't fit is a failed row. Estimated from measured peaks (nitro_cli/vram.py).")]


def check_max_vram(value: float | None) -> None:
    """`--max-vram` by vram.py's rule for a budget, checked here because click's FloatRange has no open lower
    bound in typer."""
    if value is not None and not is_budget(value):
        raise UsageError(f"--max-vram must be a positive, finite number of GiB, not {value:g}", hint="e.g. --max-vram 6")


def check_not_blank(value: str | None, option: str, hint: str) -> None:
    """An option given as "" (a script's `--preset "$PRESET"` with the variable unset) is a mistake, not the
    option left out: without this check it would silently run with the default."""
    if value is not None and not value.strip():
        raise UsageError(f"{option} is empty", hint=hint)


def check_utf8(value: str, what: str) -> None:
    """Text typed in a Latin-1 terminal or passed by a script saved as cp1252 reaches Python as undecodable bytes
    (kept as lone surrogates), which no prompt encoder, file name or PNG text chunk can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        character = ord(value[exc.start])
        found = f"byte 0x{character - 0xDC00:02x}" if 0xDC80 <= character <= 0xDCFF else f"U+{character:04X}"
        raise UsageError(f"{what} is not UTF-8 text ({found} at character {exc.start + 1})",
                         hint="set the terminal or script to UTF-8 (e.g. LANG=C.UTF-8), or give the text in a UTF-8 "
                              "prompts file with --prompts-file") from None


def out_folder(value: str) -> Path:
    """`--out` as typed: typer's Path type would read "" (a script's `--out "$DIR"`, the variable unset) as the
    current folder."""
    check_not_blank(value, "--out", "give a folder, e.g. --out outputs (--out . is the current folder)")
    return Path(value)


STDOUT = Path("-")  # a report file given as `-`: standard output


def check_report_file(path: Path | None, option: str) -> None:
    """A file to write after a long run: a missing folder or a folder given as the file is found before it."""
    if path is None or path == STDOUT:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder, not a file", hint=f"e.g. {option} {path / 'report'}")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist",
                         hint=f"create it first (mkdir -p {path.parent}) or write elsewhere")
    # os.access also says no for a read-only filesystem, which no file mode shows.
    # An existing file is written in place (/dev/stdout too, in a /dev no user may write to); a new one is
    # created in its folder.
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise UsageError(f"{option} {path}: not writable (permissions or a read-only filesystem)",
                         hint="write it to a folder you can write to")
