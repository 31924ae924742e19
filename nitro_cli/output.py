"""Image files: names that sort in prompt order, AUTOMATIC1111 infotext, writes no reader sees half-done."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nitro_cli import __version__

NAME_PATTERN = re.compile(r"^(\d{5})-(\d+)-.*\.png$")


def slug(prompt: str, limit: int = 48) -> str:
    text = re.sub(r"[^\w]+", "-", prompt.lower(), flags=re.UNICODE).strip("-")
    return text[:limit].rstrip("-") or "image"


def next_index(folder: Path) -> int:
    """One past the highest `NNNNN-` number in `folder`, so new files never overwrite old ones."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := NAME_PATTERN.match(p.name))]
    return max(numbers, default=-1) + 1


def image_name(index: int, seed: int, prompt: str) -> str:
    return f"{index:05d}-{seed}-{slug(prompt)}.png"


def _quote(value: str) -> str:
    """AUTOMATIC1111's quoting: values with commas, colons or newlines become JSON strings."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(prompt: str, negative: str, params: dict[str, object]) -> str:
    """The `parameters` text A1111 writes: prompt, `Negative prompt:` line, then `Key: value, ...`."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    params = {**params, "Version": f"nitro {__version__}"}
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value is not None))
    return "\n".join(lines)


def save_png(image, path: Path, parameters: str) -> None:
    """Write to a hidden temporary name in the same folder, then rename: readers see all or nothing."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    temporary = path.with_name(f".{path.name}.part")
    try:
        image.save(temporary, format="PNG", pnginfo=info)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
