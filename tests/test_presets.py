"""Presets: shipped files load, overrides apply, every class of bad input is exit 2 naming the problem."""

import dataclasses
import os
from pathlib import Path

import pytest

from nitro_cli.cli import app
from nitro_cli.errors import UsageError
from nitro_cli.presets import Preset, all_keys, flatten, load_preset, parse_overrides, shipped_names
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["baseline", "beginner", "advanced", "expert", "deploy"]


def test_every_tier_is_shipped():
    assert set(SHIPPED) <= set(shipped_names())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_loads(name):
    loaded = load_preset(name)
    assert loaded.name == name
    assert loaded.settings.tier == name
    assert loaded.source.endswith(f"{name}.yaml")


def test_tier_content_follows_the_article():
    baseline, beginner, advanced, expert, deploy = (load_preset(n).settings for n in SHIPPED)
    assert (baseline.precision, baseline.scheduler, baseline.steps, baseline.safety_checker) == ("float32", "pndm", 50, True)
    assert (beginner.precision, beginner.attention, beginner.scheduler, beginner.steps) == ("float16", "sdpa", "euler_a", 25)
    assert not advanced.safety_checker and advanced.scheduler == "dpmpp_2m_karras"
    assert advanced.prompt_cache and advanced.channels_last and advanced.fuse_qkv
    assert expert.compile != "none"
    assert deploy.batch_size > 1


def test_set_overrides_plain_and_dotted_keys():
    settings = load_preset("beginner", ["steps=12", "vae.tiling=true", "guidance=5", "scheduler=ddim"]).settings
    assert settings.steps == 12 and settings.vae.tiling is True and settings.guidance == 5.0
    assert settings.scheduler == "ddim"
    assert settings.precision == "float16"  # untouched fields keep the preset's values


def test_user_yaml_file(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("precision: float16\nsteps: 30\nvae:\n  slicing: true\n")
    loaded = load_preset(str(own))
    assert loaded.name == "mine" and loaded.settings.steps == 30 and loaded.settings.vae.slicing


def test_flatten_uses_the_keys_set_accepts():
    assert list(flatten(load_preset("baseline").settings)) == all_keys()


@pytest.mark.parametrize("override, expected", [
    ("stpes=20", ["unknown key 'stpes'", "did you mean 'steps'"]),
    ("vae.tilng=true", ["unknown key 'vae.tilng'", "did you mean 'vae.tiling'"]),
    ("STEPS=20", ["unknown key 'STEPS'", "did you mean 'steps'"]),
    ("scheduler=Euler_A", ["'scheduler' is 'Euler_A'", "did you mean 'euler_a'"]),
    ("steps=0", ["'steps' must be at least 1"]),
    ("guidance=-1", ["'guidance' must be at least 0"]),
    ("guidance=.nan", ["'guidance' must be a number, not nan"]),
    ("width=500", ["'width' must be a multiple of 8"]),
    ("steps=many", ["'steps' must be a whole number"]),
    ("channels_last=maybe", ["'channels_last' must be true or false"]),
    ("scheduler=eulr_a", ["'scheduler' is 'eulr_a'", "euler_a", "dpmpp_2m_karras"]),
    ("precision=fp8", ["allowed: float32, float16, bfloat16"]),
    ("vae=1", ["'vae' is a group"]),
    ("steps", ["expected KEY=VALUE"]),
])
def test_bad_override_is_exit_2_naming_the_problem(runner, tmp_path, override, expected):
    result = runner.invoke(app, ["generate", "x", "--set", override, "--model", "random:tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert not list(tmp_path.iterdir())  # nothing generated
    assert "Error:" in result.output and "Traceback" not in result.output
    for text in expected:
        assert text in result.output
    if "must" in expected[0] or "unknown" in expected[0]:
        assert "beginner.yaml" in result.output  # names the file


def test_a_flag_out_of_range_names_the_key_and_the_preset_not_set(runner, tmp_path):
    result = runner.invoke(app, ["generate", "x", "--steps", "0", "--model", "random:tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "'steps' must be at least 1, not 0; allowed: 1 to 1000 (overriding preset" in result.output and "--set" not in result.output


@pytest.mark.parametrize("raw, value", [("1e-05", 1e-05), ("2.5E+1", 25.0), ("7.5", 7.5), ("1e5x", "1e5x")])
def test_override_numbers_with_an_exponent_are_numbers(raw, value):
    """YAML 1.1 (PyYAML) reads 1e-05 as text; Python writes 0.00001 that way, so --guidance 0.00001 failed."""
    assert parse_overrides([f"guidance={raw}"]) == {"guidance": value}


def test_a_tiny_guidance_flag_is_accepted(runner, tmp_path):
    result = runner.invoke(app, ["generate", "x", *FAST, "--guidance", "0.00001", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output



@pytest.mark.parametrize("content, expected", [
    ("precison: float16\n", "unknown key 'precison'"),
    ("steps: -3\n", "'steps' must be at least 1"),
    ("- a\n- b\n", "must be a mapping"),
    ("steps: [1, 2\n", "not valid YAML"),
])
def test_bad_preset_file_is_exit_2_naming_the_file(runner, tmp_path, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = runner.invoke(app, ["generate", "x", "--preset", str(bad), "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 2
    assert expected in result.output and str(bad) in result.output


def test_unknown_preset_name_suggests_the_closest(runner, tmp_path):
    result = runner.invoke(app, ["generate", "x", "--preset", "expret", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 2
    assert "did you mean 'expert'" in result.output


@pytest.mark.parametrize("command", [["generate", "x"], ["checklist"]])
def test_an_empty_preset_or_tier_is_a_usage_error_not_the_default(runner, tmp_path, command):
    """`--preset "$PRESET"` with the variable unset once ran the default preset without a word."""
    option = "--preset" if command[0] == "generate" else "--tier"
    out = tmp_path / "out"
    extra = ["--out", str(out), *FAST] if command[0] == "generate" else []
    result = runner.invoke(app, [*command, option, " ", *extra])
    assert result.exit_code == 2, result.output
    assert f"Error: {option} is empty" in result.stderr
    assert not out.exists()


def test_set_a_group_after_its_keys_keeps_them_or_is_refused():
    assert parse_overrides(["vae.tiling=true", "vae={slicing: true}"]) == {"vae": {"tiling": True, "slicing": True}}
    for pairs in (["steps.x=3", "steps=2"], ["steps=2", "steps.x=3"]):  # refused in either order
        with pytest.raises(UsageError, match="'steps' is set both as a value and as a group"):
            parse_overrides(pairs)


def test_cli_flag_out_of_range_is_a_usage_error():
    with pytest.raises(UsageError, match="multiple of 8"):
        load_preset("beginner", ["height=100"])


def test_a_key_given_twice_in_a_preset_file_is_an_error_naming_key_and_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("steps: 5\nvae:\n  tiling: true\n  tiling: false\n")
    with pytest.raises(UsageError) as error:
        load_preset(str(twice))
    assert "'tiling'" in error.value.message and "line 4" in error.value.message and str(twice) in error.value.message


def test_a_mapping_that_holds_itself_is_a_usage_error_not_a_recursion(tmp_path):
    """YAML lets an anchor's alias sit inside the anchored mapping; the duplicate-key walk must not follow it
    forever (a RecursionError traceback)."""
    looped = tmp_path / "looped.yaml"
    looped.write_text("steps: 5\nvae: &v\n  tiling: true\n  again: *v\n")
    with pytest.raises(UsageError, match="unknown key 'vae.again'"):
        load_preset(str(looped))


def test_yaml_syntax_error_is_one_line_with_file_and_line(runner, tmp_path):
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("steps: 5\nvae:\n\ttiling: true\n")
    result = runner.invoke(app, ["generate", "x", "--preset", str(tabbed), "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(tabbed) in error[0] and "line 3" in error[0], result.stderr
    assert "<unicode string>" not in result.stderr


def test_two_documents_in_a_preset_file_are_named_as_such(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text("steps: 5\n---\nsteps: 6\n")
    with pytest.raises(UsageError, match="line 2, column 1.*single document.*another document"):
        load_preset(str(two))


def test_a_folder_given_as_preset_is_named_a_folder(tmp_path):
    with pytest.raises(UsageError, match="is a folder, not a preset file"):
        load_preset(str(tmp_path))


def test_a_shipped_name_means_the_shipped_preset_whatever_the_current_folder_holds(runner, tmp_path, monkeypatch):
    """`--preset advanced --out advanced` made an `advanced/` folder, and the next run said "advanced is a folder";
    an empty `expert` file ran as the expert preset with the baseline's settings; a `deploy/` folder broke
    `checklist`, which loads every tier by name."""
    monkeypatch.chdir(tmp_path)
    for folder in ("advanced", "deploy"):
        (tmp_path / folder).mkdir()
    (tmp_path / "expert").write_text("")
    for name in ("advanced", "expert"):
        assert load_preset(name).source == load_preset(str(ROOT / "presets" / f"{name}.yaml")).source
    assert load_preset("expert").settings.tier == "expert"
    assert load_preset("./expert").settings == Preset()  # spelled as a path: the local file
    result = runner.invoke(app, ["checklist", "--json"])
    assert result.exit_code == 0, result.output


def test_a_shipped_name_with_yaml_appended_suggests_the_name(tmp_path, monkeypatch):
    """The hint named `--preset advanced`, also to `checklist --tier advanced.yaml` and `bench --presets ...`."""
    monkeypatch.chdir(tmp_path)  # no advanced.yaml here
    with pytest.raises(UsageError) as error:
        load_preset("advanced.yaml")
    assert "did you mean the shipped preset advanced (its name, without .yaml)?" in error.value.hint


@pytest.mark.parametrize("document", ["0\n", "false\n", "[]\n", "''\n"])
def test_a_document_that_is_no_mapping_is_refused_even_when_it_is_falsy(tmp_path, document):
    """`0` or `false` as the whole file once ran the untuned defaults without a word."""
    odd = tmp_path / "odd.yaml"
    odd.write_text(document)
    with pytest.raises(UsageError, match="must be a mapping of keys to values"):
        load_preset(str(odd))


def test_an_empty_preset_file_keeps_every_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing changed yet\n")
    assert load_preset(str(empty)).settings == Preset()


@pytest.mark.parametrize("raw, value", [("010", 10), ("-07", -7), ("0o17", 15), ("0x1F", 31), ("1:30", "1:30"),
                                        ("1_000", "1_000"), ("25", 25)])
def test_override_integers_are_read_as_yaml_1_2_reads_them(raw, value):
    """YAML 1.1 (PyYAML) read `--set steps=010` as octal 8 and `1:30` as 90 (base 60), and ran that many steps."""
    assert parse_overrides([f"steps={raw}"]) == {"steps": value}


def test_a_preset_file_reads_integers_as_set_does(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("steps: 010\nclaimed: 2:1\n")
    settings = load_preset(str(own)).settings
    assert (settings.steps, settings.claimed) == (10, "2:1")


def test_a_preset_file_reads_exponent_numbers_as_set_does(tmp_path):
    """PyYAML (YAML 1.1) read `guidance: 1e1` in a file as text while `--set guidance=1e1` was a number."""
    own = tmp_path / "own.yaml"
    own.write_text("guidance: 1e1\nsteps: 20\n")
    assert load_preset(str(own)).settings.guidance == 10.0


def test_a_preset_file_not_in_utf8_names_the_line(runner, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("steps: 20\ntier: café\n".encode("latin-1"))
    result = runner.invoke(app, ["checklist", "--tier", str(latin1)])
    assert result.exit_code == 2
    assert f"Error: preset {latin1} is not UTF-8 text (line 2: byte 0xe9)" in result.stderr
    assert "Hint: save it as UTF-8" in result.stderr


def test_an_unreadable_preset_file_is_a_usage_error_not_a_traceback(tmp_path, monkeypatch):
    """A file without read permission (root, who runs the tests, reads any: so its opening is refused here)."""
    locked = tmp_path / "locked.yaml"
    locked.write_text("steps: 20\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(UsageError, match=f"cannot read preset {locked}: Permission denied"):
        load_preset(str(locked))


@pytest.mark.parametrize("line, expected", [
    ("steps: '25'", "'steps' must be a whole number, not '25'; allowed: 1 to 1000"),
    ("guidance: high", "'guidance' must be a number, not 'high'; allowed: 0.0 to 50.0"),
    ("tier: no", "'tier' must be text, not False (put it in quotes)"),
    ("compile: off", "'compile' must be text, not False; allowed: none, default"),
])
def test_a_value_of_the_wrong_type_names_what_is_allowed(tmp_path, line, expected):
    """The contract: bad values name the allowed values, a wrong type as much as an out-of-range number."""
    own = tmp_path / "own.yaml"
    own.write_text(line + "\n")
    with pytest.raises(UsageError) as error:
        load_preset(str(own))
    assert expected in error.value.message and str(own) in error.value.message


def test_a_dotted_key_in_a_file_says_to_nest_it(tmp_path):
    """`vae.tiling: true`, as it is written on --set, once got "did you mean 'attention'?"."""
    own = tmp_path / "own.yaml"
    own.write_text("vae.tiling: true\n")
    with pytest.raises(UsageError) as error:
        load_preset(str(own))
    assert "unknown key 'vae.tiling'" in error.value.message
    assert "nest it: 'vae:', and '  tiling: ...' on the line below" in error.value.hint


@pytest.mark.parametrize("asked, meant", [("mine.yml", "mine.yaml"), ("mien.yaml", "mine.yaml"), ("mine", "mine.yaml")])
def test_a_mistyped_preset_file_suggests_its_neighbour(tmp_path, asked, meant):
    (tmp_path / "mine.yaml").write_text("steps: 20\n")
    with pytest.raises(UsageError, match="preset file not found") as error:
        load_preset(f"{tmp_path}/{asked}")
    assert f"did you mean {tmp_path / meant}?" in error.value.hint


def test_a_pipe_given_as_preset_is_named_not_a_file(tmp_path):
    """`--preset <(...)` once said "preset file not found" for a file that is there (bench reads a preset twice)."""
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    with pytest.raises(UsageError, match="is not a regular file"):
        load_preset(str(pipe))


def _fields(cls=Preset, prefix=""):
    """Every preset field by its dotted key, the groups' (`vae.tiling`) included."""
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            yield from _fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def _as_documented(f: dataclasses.Field) -> str:
    """The `values (default)` cell docs/presets.md gives a field, written from the field's own rules."""
    rules = f.metadata
    default = {True: "true", False: "false"}[f.default] if f.type == "bool" else (
        f"{f.default:g}" if f.type == "float" else f.default)
    if f.type == "bool":
        return f"`true`/`false` (`{default}`)"
    if rules["choices"]:
        return ", ".join(f"`{choice}`" for choice in rules["choices"]) + f" (`{default}`)"
    if f.type == "str":
        return f"text (`{default}`)" if default else "text"
    multiple = f", multiples of {rules['multiple_of']}" if rules["multiple_of"] else ""
    return f"{rules['min']:g}–{rules['max']:g}{multiple} (`{default}`)"


def test_the_field_reference_gives_each_field_its_real_choices_range_and_default():
    """docs/presets.md is the reference users write their presets from: every field, its allowed values and
    default as the code checks them (a field row: `| `key` | values (default) | what it does | call |`)."""
    documented = {}
    for line in (ROOT / "docs" / "presets.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            documented.update({key.strip("`"): cells[1] for key in cells[0].split(", ")})
    assert sorted(documented) == sorted(all_keys())
    wrong = {key: (documented[key], _as_documented(f)) for key, f in _fields() if documented[key] != _as_documented(f)}
    assert wrong == {}, "docs/presets.md (documented, as the code checks it)"


def test_set_one_key_of_a_group_keeps_the_presets_other_keys():
    """lowvram slices and tiles its VAE: `--set vae.tiling=false` must turn tiling off and leave slicing on."""
    assert load_preset("lowvram").settings.vae.slicing is True
    vae = load_preset("lowvram", ["vae.tiling=false"]).settings.vae
    assert (vae.slicing, vae.tiling) == (True, False)


@pytest.mark.parametrize("override", ["steps=1", "steps=1000", "guidance=0", "guidance=50", "width=64", "width=4096",
                                      "batch_size=64", "feature_cache_interval=10"])
def test_the_ends_of_an_allowed_range_are_allowed(override):
    """The messages say "allowed: 1 to 1000": both ends are in (guidance 0 turns classifier-free guidance off)."""
    key, value = override.split("=")
    assert getattr(load_preset("beginner", [override]).settings, key) == float(value)


@pytest.mark.parametrize("override", ["steps=true", "batch_size=yes", "width=on"])
def test_a_yes_or_no_is_not_a_whole_number(override):
    """YAML reads yes/on/true as booleans, which Python counts as the number 1: `--set steps=yes` would run 1 step."""
    with pytest.raises(UsageError, match="must be a whole number, not True"):
        load_preset("beginner", [override])

