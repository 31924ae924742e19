"""The article's §5.1 checklist made real for one machine: `nitro checklist`'s data, no torch here.

A tier's items are the preset settings where it differs from `baseline`, read from the preset files.
Whether this machine can do each comes from the pipeline builder's own rules (`builder.*_blocker`),
and what each tier really gains from the newest `nitro bench` report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nitro_cli import builder
from nitro_cli.benchmark import BASELINE
from nitro_cli.errors import UsageError
from nitro_cli.hardware import Machine
from nitro_cli.presets import Preset, flatten, load_preset, shipped_names

# Text fields describe a tier; they change nothing in the pipeline.
DESCRIPTIVE = ("tier", "scenario", "claimed")
TIER_ORDER = ("baseline", "beginner", "advanced", "expert", "deploy")

# What the article claims per technique (docs/reference-measurements.md, "The article"): data about the
# article, keyed by the preset setting that implements the technique. Settings it never mentions have no entry.
ARTICLE_CLAIMS = {
    "precision": "14.2 → 8.7 GB VRAM (§2.1)",
    "attention=xformers": "+40% attention speed, -25% memory (§2.3)",
    "safety_checker": "-7% memory (§2.4)",
    "scheduler": "Euler a 20 steps, DPM++ 2M Karras 30, LMS 25 (§3.1)",
    "steps": "20-25 steps (§3.1, §5.1)",
    "prompt_cache": "-30% time for 5+ images of one prompt (§3.3)",
    "offload": "model sharding: a 6 GB RTX 2060 runs 512² at 5.8 GB (§2.2); part of expert's 3x (§5.1). "
               "Measured: memory down, time up: model offload 1.77 GiB peak at 1.9x the fp16 time "
               "(plain diffusers, H200, 2026-11-26, docs/reference-measurements.md); "
               "lowvram 2039 MiB at 1.87x beginner's time (nitro bench, H200, 2026-11-26, docs/benchmarks.md)",
    "quantization": "8-bit loading: a 6 GB card fits (§2.2); part of expert's 3x (§5.1). Measured: memory down, "
                    "time up: bitsandbytes 8-bit UNet step 74.3 vs 27.6 ms fp16 eager (2.7x slower), "
                    "1.86 GiB resident (plain diffusers, H200, 2026-11-26, docs/reference-measurements.md)",
}

# Items the article puts into a tier that nitro keeps out of it because they save memory and cost time
# (article §5.1's expert tier: 8-bit loading and model sharding). Keyed by the preset setting.
ARTICLE_ITEMS_MOVED = {"expert": ("quantization", "offload")}


@dataclass(frozen=True)
class Item:
    name: str
    setting: str
    available: bool
    reason: str
    claimed: str


@dataclass(frozen=True)
class Tier:
    tier: str
    scenario: str
    claimed: str
    items: tuple[Item, ...]
    measured: dict[str, Any] | None
    notes: tuple[str, ...] = ()


def _availability(key: str, value: Any, preset: Preset, device: str, machine: Machine) -> tuple[bool, str]:
    """(can this machine do it, why not or what it does instead), from the builder's rules."""
    # fuse_qkv and sdpa_backend meet the attention the UNet runs (xformers falls back to SDPA), fuse_qkv the
    # weights it has (bitsandbytes is skipped off CUDA).
    attention = builder.effective_attention(preset.attention, device, machine)
    if key == "precision":
        dtype, why = builder.effective_precision(value, device, machine)
        return dtype == value, why or ""
    if key == "attention" and value == "xformers":
        why = builder.xformers_blocker(device, machine)
    elif key == "quantization" and value != "none":
        why = builder.quantization_blocker(value, device, machine)
    elif key == "offload" and value != "none":
        why = builder.offload_blocker(device)
    elif key == "compile" and value != "none":
        why = builder.compile_blocker(device, machine)
        if not why and (instead := builder.cuda_graphs_blocker(value, device)):
            return True, instead
    elif key in ("compile_vae", "compile_text_encoder", "inductor_tuning") and value:
        why = builder.compile_extra_blocker(preset, device, machine)
    elif key == "fuse_qkv" and value:
        why = builder.fuse_qkv_blocker(attention, builder.effective_quantization(preset.quantization, device))
    elif key == "feature_cache_interval" and value > 1:
        why = builder.feature_cache_blocker(preset, device)
    elif key == "sdpa_backend" and value != "auto":
        dtype, _ = builder.effective_precision(preset.precision, device, machine)
        why = builder.sdpa_backend_blocker(value, attention, device, dtype, machine)
    elif key == "cudnn_benchmark" and value:
        why = builder.cuda_only_blocker(device)
    else:
        why = None
    return why is None, why or ""


def _claim(key: str, value: Any) -> str:
    return ARTICLE_CLAIMS.get(f"{key}={value}") or ARTICLE_CLAIMS.get(key, "")


def tier_items(preset: Preset, reference: Preset, device: str, machine: Machine) -> tuple[Item, ...]:
    items = []
    base = flatten(reference)
    for key, value in flatten(preset).items():
        if key in DESCRIPTIVE or base.get(key) == value:
            continue
        shown = str(value).lower() if isinstance(value, bool) else value
        available, reason = _availability(key, value, preset, device, machine)
        items.append(Item(name=key.replace("_", " ").replace(".", " "), setting=f"{key}: {shown}",
                          available=available, reason=reason, claimed=_claim(key, value)))
    return tuple(items)


def moved_item_notes(tier: str, preset: Preset, reference: Preset) -> tuple[str, ...]:
    """The article's items for `tier` that its preset leaves out, with their real effect and the presets that
    set them (read from the preset files)."""
    settings, base = flatten(preset), flatten(reference)
    notes = []
    for key in ARTICLE_ITEMS_MOVED.get(tier, ()):
        if settings[key] != base[key]:
            continue
        where = [name for name in shipped_names() if flatten(load_preset(name).settings)[key] != base[key]]
        notes.append(f"not in {tier}: `{key}` ({ARTICLE_CLAIMS[key]}); it saves memory and costs time, so it "
                     f"is in {', '.join(where) or 'no shipped preset'} (or --set {key}=...)")
    return tuple(notes)


def tier_names() -> list[str]:
    """The article's tiers in their order, then any other shipped preset (lowvram, minvram, ...)."""
    names = shipped_names()
    return [n for n in TIER_ORDER if n in names] + [n for n in names if n not in TIER_ORDER]


def read_bench_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"bench report not found: {path}", hint="run `nitro bench --json FILE` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"bench report {path} is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise UsageError(f"bench report {path} has no `results` list",
                         hint="give a file written by `nitro bench --json FILE`")
    return report


MEASURED_FIELDS = ("median_s", "speedup_vs_baseline", "peak_vram_mib", "images_per_min", "psnr_vs_baseline_db")


def _figure(name: str, value: Any) -> float | int | str | None:
    """A report's figure, or None for what is not one (an old or hand-edited file). Only PSNR may be infinite,
    written "inf" as bench does: json reads Infinity and NaN, but they are not JSON, so neither is written
    back."""
    if name == "psnr_vs_baseline_db" and value in ("inf", math.inf):
        return "inf"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return value if is_number and math.isfinite(value) else None


def _count(value: Any) -> int | None:
    """A report's step count or size, or None for what is not one (an old or hand-edited file)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _row(report: dict[str, Any], name: str, shipped: bool) -> dict[str, Any] | None:
    """The report's row for preset `name`. Rows are named by file stem, so a user's `expert.yaml` variant has
    the expert tier's name: a row is a shipped tier's only if bench says it ran the shipped file (and a user
    file's only if not). Reports from before bench said so are taken by name."""
    return next((r for r in report["results"] if isinstance(r, dict) and r.get("preset") == name
                 and r.get("shipped") in (None, shipped)), None)


def measured_for(report: dict[str, Any] | None, source: Path | None, tier: str,
                 shipped: bool) -> dict[str, Any] | None:
    """What `report` (the file `source`) measured for preset `tier`, shipped or not; None for no usable row."""
    if report is None:
        return None
    entry = _row(report, tier, shipped)
    if entry is None or _figure("median_s", entry.get("median_s")) is None:  # a row that failed, or junk
        return None
    environment = report.get("environment")
    environment = environment if isinstance(environment, dict) else {}
    measured = {name: _figure(name, entry.get(name)) for name in MEASURED_FIELDS}
    # `bench --baseline`, or a user's baseline.yaml as the baseline row: compared with another preset.
    baseline = next((r for r in report["results"] if isinstance(r, dict) and r.get("preset") == BASELINE), {})
    if environment.get("baseline", BASELINE) != BASELINE or baseline.get("shipped") is False:
        measured.update(speedup_vs_baseline=None, psnr_vs_baseline_db=None)
    # How the figures were made: a dry run's `bench --steps 2 --width 64` seconds are not a 25-step 512x512 image's,
    # deploy's at batch 1 are not its batch's, and a tier fitted to `bench --max-vram` ran with other settings.
    measured.update({name: _count(entry.get(name)) for name in ("steps", "width", "height", "batch_size")})
    added = entry.get("vram_overrides")
    measured["vram_overrides"] = [o for o in added if isinstance(o, str)] if isinstance(added, list) else []
    measured.update(device=environment.get("device"), model=environment.get("model"), file=str(source))
    return measured


def build_checklist(machine: Machine, tiers: list[str], report: dict[str, Any] | None = None,
                    report_path: Path | None = None) -> list[Tier]:
    device = builder.resolve_device("auto", machine)
    reference = load_preset("baseline").settings
    result = []
    for name in tiers:
        loaded = load_preset(name)
        preset = loaded.settings
        result.append(Tier(tier=loaded.name, scenario=preset.scenario, claimed=preset.claimed,
                           items=tier_items(preset, reference, device, machine),
                           measured=measured_for(report, report_path, loaded.name, loaded.shipped),
                           notes=moved_item_notes(loaded.name, preset, reference)))
    return result


def measured_text(measured: dict[str, Any] | None) -> str:
    """One line for tables: what the bench report says about a tier."""
    if measured is None:
        return "not measured"
    parts = [f"{measured['median_s']:.3g} s/image"]
    if measured.get("steps") and measured.get("width") and measured.get("height"):
        batch = f", batch {measured['batch_size']}" if measured.get("batch_size") else ""
        parts[0] += f" ({measured['steps']} steps, {measured['width']}x{measured['height']}{batch})"
    if measured.get("vram_overrides"):
        parts.append("fitted to --max-vram with " + " ".join(f"--set {o}" for o in measured["vram_overrides"]))
    if measured.get("speedup_vs_baseline") is not None:
        parts.append(f"{measured['speedup_vs_baseline']:.2f}x vs baseline")
    if measured.get("peak_vram_mib") is not None:
        parts.append(f"{measured['peak_vram_mib']:.0f} MiB peak VRAM")
    model = measured.get("model")
    if isinstance(model, str) and model:
        # The figures are this model's: random:tiny's seconds say nothing about a real SD 1.x model's.
        parts.append(f"{model} (random weights)" if model.startswith("random:") else model)
    if measured.get("device"):
        parts.append(f"on {measured['device']}")
    return ", ".join(parts)
