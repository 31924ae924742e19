"""Where nitro keeps files between runs: one cache folder, overridable with NITRO_CACHE_DIR."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$NITRO_CACHE_DIR`, else `$XDG_CACHE_HOME/nitro`, else `~/.cache/nitro` (not created here)."""
    if os.environ.get("NITRO_CACHE_DIR"):
        return Path(os.environ["NITRO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nitro"


def bench_dir() -> Path:
    """Every `nitro bench` run saves its JSON report here too; `nitro checklist` reads the newest."""
    return cache_dir() / "bench"


def compile_cache_dir() -> Path:
    """torch.compile's on-disk caches (inductor), so a second process skips most compilation."""
    return cache_dir() / "torch-compile"


def make_cache_folder(folder: Path) -> Path:
    """`folder`, a folder in nitro's cache, created. A cache that can't be written (a read-only home, a mistyped
    NITRO_CACHE_DIR) is named as such: without this it read as a traceback, or as a bad `--out` the user never gave."""
    from nitro_cli.errors import UsageError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = None if os.access(folder, os.W_OK) else "not writable"  # also a read-only filesystem
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why:
        raise UsageError(f"nitro's cache folder {folder} can't be written ({why})",
                         hint="set NITRO_CACHE_DIR to a folder you can write to")
    return folder
