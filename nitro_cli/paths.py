"""Where nitro keeps files between runs: one cache folder, overridable with NITRO_CACHE_DIR."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from nitro_cli.errors import RuntimeFailure, UsageError

# generate's default --out, relative to the current folder (doctor checks the free disk there).
DEFAULT_OUTPUTS = "outputs"


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


# dlopen's words for a library cut short before the end of its ELF header (an empty file, say).
_LIBRARY_CUT_SHORT = re.compile(r"(\S+\.so): file too short")


def compile_cache_failure(exc: BaseException) -> RuntimeFailure | None:
    """`exc` as a damaged library in compile_cache_dir(), if that is what it is. torch builds each compiled kernel
    library right at its cache path and reuses any file it finds there, so a compile killed part way (SIGKILL, the
    OOM killer) can leave an empty library that every later run with that kernel fails to load."""
    cache = compile_cache_dir().resolve()
    for match in _LIBRARY_CUT_SHORT.finditer(str(exc)):
        library = Path(match[1])
        if library.resolve().is_relative_to(cache):
            return RuntimeFailure(f"a damaged file in the compile cache: {library} (a compile killed part way "
                                  "leaves one)", hint=f"delete it and any other empty library there (find {cache} "
                                                      "-name '*.so' -empty -delete), then run again: torch compiles "
                                                      "them anew")
    return None


def make_cache_folder(folder: Path) -> Path:
    """`folder`, a folder in nitro's cache, created. A cache that can't be written (a read-only home, a mistyped
    NITRO_CACHE_DIR) is named as such: without this it reads as a traceback, or as a bad `--out` the user never gave."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = None if os.access(folder, os.W_OK) else "not writable"  # also a read-only filesystem
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why:
        raise UsageError(f"nitro's cache folder {folder} can't be written ({why})",
                         hint="set NITRO_CACHE_DIR to a folder you can write to")
    return folder


def unwritable(folder: Path) -> str | None:
    """Why `folder` can't be created or written (None when it can), without creating it: doctor only looks."""
    for path in (folder, *folder.parents):
        if path.is_dir():
            return None if os.access(path, os.W_OK) else f"{path} is not writable"
        if path.exists() or path.is_symlink():
            return f"{path} is not a folder"
    return None


# A temporary file or staging folder nothing has written to for this long belongs to a process that is gone.
# Its age tells, not a process id: on a folder shared by several machines (a multi-node launch, a cache on a
# network share), a process id may be another machine's.
STALE_SECONDS = 3600
_STAGING_NAME = re.compile(r"^\..+-[a-z0-9_]{8}$")  # made_once's: tempfile.mkdtemp(prefix=".NAME-")


def _remove_stale_stagings(parent: Path) -> None:
    """The staging folders killed processes left in `parent` (kill -9, the OOM killer: no `finally` runs), which
    can hold gigabytes (an SD 1.x ONNX export): one whose newest file is older than STALE_SECONDS. A process
    still making an entry writes into its own."""
    cutoff = time.time() - STALE_SECONDS
    for staging in parent.iterdir():
        if not (_STAGING_NAME.match(staging.name) and staging.is_dir() and not staging.is_symlink()):
            continue
        try:
            if max(path.lstat().st_mtime for path in (staging, *staging.rglob("*"))) < cutoff:
                shutil.rmtree(staging)
        except OSError:  # removed meanwhile, or not this user's to remove: it only takes space
            pass


def made_once(folder: Path, make: Callable[[Path], object], is_complete: Callable[[Path], bool]) -> Path:
    """`folder` in nitro's cache, unless `is_complete` already, made by `make(staging)` in a new hidden folder beside it and
    renamed into place: a reader never sees half of it, an interrupted `make` leaves nothing there, and
    processes making it at once (one per GPU) never write into one folder: the first rename wins."""
    if is_complete(folder):
        return folder
    parent = make_cache_folder(folder.parent)
    _remove_stale_stagings(parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=parent))
    try:
        make(staging)
        if folder.exists() and not is_complete(folder):  # damaged (a file in it deleted by hand): replaced
            shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except OSError:
        if not is_complete(folder):
            raise
        # another process made it first: theirs is as good
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
