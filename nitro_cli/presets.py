"""Presets: plain data loaded from YAML. No torch here: `nitro --help` and `checklist` stay fast.

A preset file holds the fields of `Preset`; nested groups (`vae:`) are written as YAML mappings and
reached from the command line with dotted keys (`--set vae.tiling=true`). Unknown keys, wrong types
and out-of-range values are usage errors (exit 2) that name the key, the file and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nitro_cli.errors import UsageError, first_line

PRECISIONS = ("float32", "float16", "bfloat16")
ATTENTIONS = ("sdpa", "xformers", "sliced")
OFFLOADS = ("none", "model", "sequential")
# int8, nf4, fp8_storage: smaller weights, for small GPUs. fp8_matmul: fp8 tensor-core matmuls, for speed.
QUANTIZATIONS = ("none", "int8", "nf4", "fp8_storage", "fp8_matmul")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
BACKENDS = ("pytorch", "onnx")  # onnx: an exported fp32 graph run by ONNX Runtime (CPU/edge)

# Scheduler key -> the sampler name AUTOMATIC1111 writes in its infotext (and users know). PNDM with
# skip_prk_steps, as SD ships it, is PLMS: A1111 has no sampler named PNDM.
SAMPLER_NAMES = {
    "pndm": "PLMS",
    "euler_a": "Euler a",
    "euler": "Euler",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "lms": "LMS",
    "ddim": "DDIM",
    "unipc": "UniPC",
}
# A1111 1.9 on reads a sampler given without a `Schedule type` with that sampler's own default schedule, which
# for DPM++ 2M is Karras: plain DPM++ 2M (evenly spaced timesteps) names its schedule, as A1111 writes it.
SCHEDULE_TYPES = {"dpmpp_2m": "Uniform"}


def _setting(default: Any, *, choices: tuple = (), minimum: float | None = None,
             maximum: float | None = None, multiple_of: int | None = None) -> Any:
    """A preset field with the rules its YAML value must follow."""
    rules = {"choices": choices, "min": minimum, "max": maximum, "multiple_of": multiple_of}
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class VaeSettings:
    slicing: bool = _setting(False)
    tiling: bool = _setting(False)


@dataclass(frozen=True)
class Preset:
    """One tier's settings. Defaults are the untuned baseline: plain diffusers as the article ran it."""

    # Descriptive, changing nothing in the pipeline: checklist shows `scenario` and `claimed`; every table
    # names a preset by its file, so `tier` is for people reading the file.
    tier: str = _setting("custom")
    scenario: str = _setting("")
    claimed: str = _setting("")
    # What the pipeline builder applies.
    precision: str = _setting("float32", choices=PRECISIONS)
    attention: str = _setting("sdpa", choices=ATTENTIONS)
    scheduler: str = _setting("pndm", choices=tuple(SAMPLER_NAMES))
    safety_checker: bool = _setting(True)
    offload: str = _setting("none", choices=OFFLOADS)
    quantization: str = _setting("none", choices=QUANTIZATIONS)
    vae: VaeSettings = field(default_factory=VaeSettings)
    compile: str = _setting("none", choices=COMPILE_MODES)
    compile_vae: bool = _setting(False)
    compile_text_encoder: bool = _setting(False)
    inductor_tuning: bool = _setting(False)
    channels_last: bool = _setting(False)
    fuse_qkv: bool = _setting(False)
    sdpa_backend: str = _setting("auto", choices=SDPA_BACKENDS)
    cudnn_benchmark: bool = _setting(False)
    # DeepCache-style: the whole UNet every N-th step, a shallow branch on its cached features in between.
    feature_cache_interval: int = _setting(1, minimum=1, maximum=10)
    backend: str = _setting("pytorch", choices=BACKENDS)
    # What generate and bench apply per call.
    prompt_cache: bool = _setting(False)
    steps: int = _setting(50, minimum=1, maximum=1000)
    guidance: float = _setting(7.5, minimum=0.0, maximum=50.0)
    width: int = _setting(512, minimum=64, maximum=4096, multiple_of=8)
    height: int = _setting(512, minimum=64, maximum=4096, multiple_of=8)
    batch_size: int = _setting(1, minimum=1, maximum=64)


@dataclass(frozen=True)
class LoadedPreset:
    """A validated preset with where it came from (for messages, tables and metadata)."""

    name: str
    source: str
    settings: Preset
    overrides: tuple[str, ...] = ()  # the `--set KEY=VALUE` pairs merged in (flags' included), as given

    @property
    def shipped(self) -> bool:
        """Whether the file is one of nitro's own (by name or by path): a user's `expert.yaml` variant is named
        like the tier."""
        return Path(self.source).resolve().parent == shipped_dir().resolve()


def shipped_dir() -> Path:
    """The folder of shipped presets: inside the wheel, or `presets/` beside the source tree."""
    packaged = resources.files("nitro_cli") / "presets"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "presets"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.yaml"))


def closest(word: str, options: list[str]) -> str | None:
    """The option nearest to a mistyped `word`, case aside (`STEPS` for `steps`), for "did you mean" hints
    (presets and prompts files)."""
    by_lowercase = {option.lower(): option for option in options}
    matches = difflib.get_close_matches(word.lower(), list(by_lowercase), n=1, cutoff=0.5)
    return by_lowercase[matches[0]] if matches else None


def resolve_path(name_or_path: str) -> Path:
    """A shipped preset's name, or a path to the user's own YAML file. A shipped name means the shipped preset
    whatever the current folder holds (`--preset advanced --out advanced` makes an `advanced/` folder, and
    checklist, doctor and --max-vram load the tiers by name); `./advanced` is a local file of that name."""
    path = Path(name_or_path).expanduser()
    shipped = shipped_dir() / f"{name_or_path}.yaml"
    spelled_as_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path
    if not spelled_as_path and shipped.is_file():
        return shipped
    if spelled_as_path or path.exists():
        if path.is_dir():
            raise UsageError(f"{name_or_path} is a folder, not a preset file", hint="give a .yaml file in it")
        if path.exists() and not path.is_file():
            # bench and --max-vram read a preset more than once, which a pipe (`<(...)`) can't give.
            raise UsageError(f"{name_or_path} is not a regular file", hint="save the preset to a .yaml file")
        if not path.is_file():
            raise UsageError(f"preset file not found: {name_or_path}", hint=_missing_file_hint(path))
        return path
    names = shipped_names()
    close = closest(name_or_path, names)
    hint = f"did you mean '{close}'? " if close else ""
    raise UsageError(f"unknown preset '{name_or_path}'",
                     hint=f"{hint}shipped presets: {', '.join(names)}; or give a path to a .yaml file")


def _missing_file_hint(path: Path) -> str:
    """A mistyped file's neighbour (`mine.yml` for `mine.yaml`), or the shipped preset a name spelled as a file means."""
    shipped = path.stem if path.parent == Path(".") and path.stem in shipped_names() else None
    try:
        neighbours = {p.stem: p.name for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml")}
    except OSError:  # no such folder, or one we may not list
        neighbours = {}
    close = closest(path.stem, list(neighbours))  # stems: every name shares the suffix, which would match alone
    guess = (f"did you mean the shipped preset {shipped} (its name, without .yaml)? " if shipped
             else f"did you mean {path.parent / neighbours[close]}? " if close else "")
    return f"{guess}shipped presets: {', '.join(shipped_names())}"


def check_unique_keys(node, walked: set[int] | None = None) -> None:
    """Refuse a key given twice in one mapping of a composed YAML document (YAML forbids it; PyYAML's
    loaders keep the last one silently, so a second `compile:` at the end of a copied preset would win)."""
    walked = set() if walked is None else walked
    if id(node) in walked:  # an alias: its node is checked once, and may hold itself (`a: &x {b: *x}`)
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            # `<<: *defaults` merges may be overridden by later keys; scalar keys are the only ones presets have.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.MarkedYAMLError(problem=f"key {key_node.value!r} is given twice",
                                               problem_mark=key_node.start_mark)
                seen.add(key_node.value)
            check_unique_keys(value_node, walked)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_unique_keys(item, walked)


class PresetLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 does: YAML 1.1, PyYAML's, reads `1e-05` (how Python writes
    0.00001) and `1e3` as text, `--set steps=010` as octal 8 and `1:30` as 90 (base 60). A preset file and `--set`
    read the same number alike."""


def yaml12_int(text: str) -> int:
    """A YAML 1.2 integer: decimal (leading zeros and all), `0o` octal or `0x` hex."""
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)


INT_TAG = "tag:yaml.org,2002:int"
PresetLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
PresetLoader.add_implicit_resolver(INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                   list("-+0123456789"))
PresetLoader.add_constructor(INT_TAG, lambda loader, node: yaml12_int(loader.construct_scalar(node)))
PresetLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
                                   list("-+.0123456789"))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs into a nested mapping; values are YAML scalars (`true`, `20`, `7.5`)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE", hint="e.g. --set steps=20 --set vae.tiling=true")
        try:
            value = yaml.load(raw, Loader=PresetLoader) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        target = nested
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {pair!r}: '{parent}' is set both as a value and as a group")
        earlier = target.get(leaf)
        if isinstance(earlier, dict):
            # `--set vae.tiling=true --set vae={slicing: true}` must not drop the tiling, nor
            # `--set steps.x=1 --set steps=2` pass where the other order is refused.
            if not isinstance(value, dict):
                raise UsageError(f"--set {pair!r}: '{key.strip()}' is set both as a value and as a group")
            value = _merge(earlier, value)
        target[leaf] = value
    return nested


def flag_overrides(**flags: Any) -> list[str]:
    """Command-line flags (`--steps 20`, ...) as `--set` pairs: one validation path for both. None: not given."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_value(key: str, value: Any, f: dataclasses.Field) -> Any:
    """The value converted to the field's type, or a message saying what is allowed."""
    rules = f.metadata
    kind = {"bool": bool, "int": int, "float": float, "str": str}[f.type]  # annotations are strings here
    low, high = rules.get("min"), rules.get("max")
    bounds = f"; allowed: {low} to {high}" if low is not None and high is not None else ""
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"'{key}' must be true or false, not {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"'{key}' must be a whole number, not {value!r}{bounds}")
    if kind is float:
        # NaN passes every range check (all comparisons are false), so it is refused by name.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"'{key}' must be a number, not {value!r}{bounds}")
        value = float(value)
    if kind is str and not isinstance(value, str):
        # YAML reads `tier: no` as false and `tier: 2024` as a number: quotes keep them text.
        allowed = f"; allowed: {', '.join(rules['choices'])}" if rules.get("choices") else " (put it in quotes)"
        raise ValueError(f"'{key}' must be text, not {value!r}{allowed}")
    if rules.get("choices") and value not in rules["choices"]:
        close = closest(str(value), list(rules["choices"]))
        guess = f" (did you mean '{close}'?)" if close else ""
        raise ValueError(f"'{key}' is {value!r}{guess}; allowed: {', '.join(rules['choices'])}")
    if low is not None and value < low:
        raise ValueError(f"'{key}' must be at least {low}, not {value!r}{bounds}")
    if high is not None and value > high:
        raise ValueError(f"'{key}' must be at most {high}, not {value!r}{bounds}")
    if rules.get("multiple_of") and value % rules["multiple_of"]:
        raise ValueError(f"'{key}' must be a multiple of {rules['multiple_of']}, not {value!r}")
    return value


def check_setting(key: str, value: Any, label: str | None = None) -> Any:
    """One top-level preset field's value, checked by that field's rules (ValueError naming `label` if not)."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    return _check_value(label or key, value, fields[key])


def _group(f: dataclasses.Field) -> type | None:
    """The settings class of a nested group (`vae`), or None for a plain value."""
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            group, _, leaf = str(key).partition(".")
            if leaf and dotted in all_keys():  # `vae.tiling: true`, written in a file as it is on --set
                raise ValueError(f"unknown key '{dotted}'", f"dotted keys are for --set; in a YAML file nest it: "
                                                             f"'{group}:', and '  {leaf}: ...' on the line below")
            close = closest(str(key), list(fields))
            guess = f"did you mean '{prefix}{close}'? " if close else ""
            raise ValueError(f"unknown key '{dotted}'", f"{guess}valid keys: {', '.join(all_keys(cls, prefix))}")
        group = _group(fields[key])
        if group is None:
            values[key] = _check_value(dotted, value, fields[key])
        elif isinstance(value, dict):
            values[key] = _build(group, value, dotted + ".")
        else:
            raise ValueError(f"'{dotted}' is a group: set its keys ({', '.join(all_keys(group, dotted + '.'))})")
    return cls(**values)


def all_keys(cls: type = Preset, prefix: str = "") -> list[str]:
    """Every settable key, nested ones dotted: what `--set` accepts."""
    keys = []
    for f in dataclasses.fields(cls):
        group = _group(f)
        if group is not None:
            keys += all_keys(group, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def flatten(preset: Preset, prefix: str = "") -> dict[str, Any]:
    """The preset as `{dotted key: value}`: for tables, JSON and checklist items."""
    flat = {}
    for f in dataclasses.fields(preset):
        value = getattr(preset, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def _read_yaml(path: Path) -> Any:
    """The document in a preset file (None when it has none); a usage error naming the file and the line if
    it can't be read as one YAML document in UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read preset {path}: {exc.strerror or first_line(exc)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"preset {path} is not UTF-8 text (line {line}: byte 0x{raw[exc.start]:02x})",
                         hint="save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    try:
        check_unique_keys(yaml.compose(text, Loader=PresetLoader))
        return yaml.load(text, Loader=PresetLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        # The context is half of some messages: "expected a single document in the stream, but found another".
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise UsageError(f"preset {path} is not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"preset {path} is not valid YAML: {first_line(exc)}") from None


def load_preset(name_or_path: str, overrides: list[str] | None = None) -> LoadedPreset:
    """Read, merge `--set` overrides into, and validate one preset."""
    path = resolve_path(name_or_path)
    data = _read_yaml(path)
    if data is None:  # an empty file, or comments only: every field keeps its default
        data = {}
    if not isinstance(data, dict):  # `0`, `false`, `[]` too: refused, not read as "no fields"
        raise UsageError(f"preset {path} must be a mapping of keys to values, not {type(data).__name__}")
    try:
        settings = _build(Preset, data)
    except ValueError as exc:
        raise UsageError(f"preset {path}: {exc.args[0]}", hint=exc.args[1] if len(exc.args) > 1 else None) from None
    if overrides:
        try:
            settings = _build(Preset, _merge(data, parse_overrides(overrides)))
        except ValueError as exc:
            # The overrides come from --set and from flags (--steps, ...): name the key, not one of the two.
            raise UsageError(f"{exc.args[0]} (overriding preset {path})",
                             hint=exc.args[1] if len(exc.args) > 1 else None) from None
    return LoadedPreset(name=path.stem, source=str(path), settings=settings, overrides=tuple(overrides or ()))
