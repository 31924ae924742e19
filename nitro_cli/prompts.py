"""Prompts: Nitro-Diffusion's style tokens (and, with the generate work, prompt files)."""

from __future__ import annotations

# The model card's tokens; several together give a mixed style.
STYLE_TOKENS = {"archer": "archer style", "arcane": "arcane style", "disney": "modern disney style"}


def apply_styles(prompt: str, styles: list[str]) -> str:
    """Append each style's token unless the prompt already has it; no token twice."""
    result = prompt.strip()
    for style in dict.fromkeys(styles):  # keeps order, drops repeats
        token = STYLE_TOKENS[style]
        if token not in result.lower():
            result = f"{result}, {token}" if result else token
    return result
