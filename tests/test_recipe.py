"""Recipe files (`edgekiln build -c recipe.yaml|toml`): real files, exact `file:line:` messages."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import assert_one_line_error
from toolchain.errors import UsageError
from toolchain.recipe import CLI_ONLY_KEYS, MAX_RECIPE_BYTES, load_recipe, merge_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "recipes"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    message = info.value.one_line()
    assert "\n" not in message and info.value.exit_code == 2
    return message


# The same recipe in both formats, with the offending key on line 4 ("{key}" and "{value}" filled in).
FORMATS = {
    "yaml": ("recipe.yaml", "# a comment\nlabels: labelled/\noutput: build/\n{key}: {value}\nseed: 1\n"),
    "toml": ("recipe.toml", '# a comment\nlabels = "labelled/"\noutput = "build/"\n{key} = {value}\nseed = 1\n'),
}


def recipe_with(tmp_path: Path, fmt: str, key: str, value: str) -> Path:
    name, template = FORMATS[fmt]
    return write(tmp_path, name, template.format(key=key, value=value))


# ---- good recipes --------------------------------------------------------------------------------


def test_yaml_and_toml_give_the_same_api_values(tmp_path):
    yaml_path = write(tmp_path, "r.yaml", """
        source: models/net.onnx
        targets: [x86, rpi4]
        output: build/
        calib: images/
        labels: /data/labelled
        calib-size: 64
        """)
    toml_path = write(tmp_path, "r.toml", """
        source = "models/net.onnx"
        targets = ["x86", "rpi4"]
        output = "build/"
        calib = "images/"
        labels = "/data/labelled"
        calib_size = 64
        """)
    expected = {"source": tmp_path / "models" / "net.onnx", "targets": ["x86", "rpi4"], "output": tmp_path / "build",
                "calib": tmp_path / "images", "labels": Path("/data/labelled"), "calib_size": 64}
    for path in (yaml_path, toml_path):
        recipe = load_recipe(path)
        assert recipe.values == expected and recipe.path == path
        assert recipe.lines["calib_size"] == 6


def test_cli_spellings_map_onto_api_names(tmp_path):
    path = write(tmp_path, "r.yaml", """
        target: rpi4
        input: image:1x1x28x28
        no-verify: true
        no-guard: true
        no-simplify: true
        no-keras-safe-mode: true
        no-lowrank-bias-correction: true
        lowrank-rank: [fc1=16, conv.2=8]
        lowrank-mode: budget
        lowrank: yes
        dynamic-batch: true
        quiet: true
        json: false
        dry-run: true
        no-cache: true
        cache-dir: ~/cache
        bench_iterations: 0
        """)
    values = load_recipe(path).values
    assert values == {"targets": ["rpi4"], "inputs": ["image:1x1x28x28"], "verify": False, "guard": False,
                      "simplify": False, "keras_safe_mode": False, "lowrank_bias_correction": False,
                      "lowrank_ranks": ["fc1=16", "conv.2=8"], "lowrank_mode": "budget", "lowrank": True,
                      "dynamic_batch": True, "quiet": True, "json": False, "dry_run": True, "no_cache": True,
                      "cache_dir": Path("~/cache").expanduser(), "bench_iterations": 0}
    assert load_recipe(write(tmp_path, "n.toml", "no-verify = false\n")).values == {"verify": True}


def test_relative_paths_are_relative_to_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "recipes"
    folder.mkdir(parents=True)
    write(folder, "r.toml", """
        source = "../models/net.pt"
        weights = "w.pth"
        model-class = "../nets/arch.py:Net"
        cache-dir = "/abs/cache"
        output = "."
        """)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    values = load_recipe(Path("project/recipes/r.toml")).values
    assert values["source"] == tmp_path / "project" / "models" / "net.pt"
    assert values["weights"] == folder / "w.pth"
    assert values["model_class"] == f"{tmp_path / 'project' / 'nets' / 'arch.py'}:Net"
    assert values["cache_dir"] == Path("/abs/cache") and values["output"] == folder
    module_class = write(folder, "m.yaml", "model-class: mypkg.nets:ResNet\n")
    assert load_recipe(module_class).values["model_class"] == "mypkg.nets:ResNet"  # a module, not a file


def test_tables_for_preprocess_model_kwargs_and_ranks(tmp_path):
    path = write(tmp_path, "r.toml", """
        lowrank-rank = { fc1 = 16 }
        atol = 1e-4

        [preprocess]
        height = 28
        width = 28
        channels = 1

        [model-kwargs]
        num_classes = 10
        """)
    values = load_recipe(path).values
    assert values == {"lowrank_ranks": {"fc1": 16}, "atol": 1e-4,
                      "preprocess": {"height": 28, "width": 28, "channels": 1},
                      "model_kwargs": {"num_classes": 10}}
    assert load_recipe(path).lines["preprocess"] == 4


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    # PyYAML (YAML 1.1) would read 1e-4 as the string '1e-4'.
    values = load_recipe(write(tmp_path, "r.yaml", "atol: 1e-4\nrtol: 2E3\nmax-drop: .5\n")).values
    assert values == {"atol": 1e-4, "rtol": 2000.0, "max_drop": 0.5}


def test_the_example_recipes_load_and_agree():
    yaml_recipe = load_recipe(EXAMPLES / "fashion-mnist.yaml")
    toml_recipe = load_recipe(EXAMPLES / "fashion-mnist.toml")
    assert yaml_recipe.values == toml_recipe.values
    values = yaml_recipe.values
    from toolchain import api
    from toolchain.build import example_defaults

    # No source: the bundled example, for the devices `edgekiln build` with no arguments builds.
    assert "source" not in values and values["targets"] == list(api.EXAMPLE_TARGETS)

    example = example_defaults()
    assert values["calib_size"] == example["calib_size"] and values["preprocess"] == example["preprocess"]
    inspect.signature(api.build_request).bind(**{k: v for k, v in values.items() if k not in CLI_ONLY_KEYS})


def test_every_recipe_value_is_a_build_argument(tmp_path):
    """A recipe using every key yields only build_request's keyword names (api.build forwards them) or CLI-only ones."""
    from toolchain import api

    path = write(tmp_path, "all.yaml", """
        source: m.onnx
        output: out
        targets: [x86]
        labels: l
        no-simplify: true
        bench-iterations: 3
        fail-fast: true
        input: [x:1x1x8x8]
        dynamic-batch: true
        opset: 17
        model-class: a.b:C
        weights: w.pth
        model-kwargs: '{"n": 1}'
        trust-pickle: false
        exporter: dynamo
        no-keras-safe-mode: false
        no-verify: false
        atol: 0.001
        rtol: 0.01
        calib: c
        seed: 3
        preprocess: raw01
        calib-size: 10
        holdout: 5
        max-drop: 2
        min-cosine: 0.9
        method: entropy
        no-guard: false
        cache-dir: cache
        no-cache: false
        lowrank: true
        lowrank-mode: ratio
        lowrank-energy: 0.9
        lowrank-ratio: 0.4
        lowrank-min-cosine: 0.98
        lowrank-max-error: 0.1
        lowrank-rank-multiple: 4
        lowrank-min-params: 100
        lowrank-ops: [Gemm, MatMul]
        lowrank-rank: fc=4
        lowrank-exclude: fc2
        lowrank-bias-correction: false
        quiet: false
        json: true
        dry-run: false
        """)
    values = load_recipe(path).values
    assert len(values) == 45
    parameters = inspect.signature(api.build_request).parameters
    for key in values:
        assert key in parameters or key.startswith("lowrank") or key in CLI_ONLY_KEYS, key
    inspect.signature(api.build_request).bind(**{k: v for k, v in values.items() if k not in CLI_ONLY_KEYS})


def test_every_build_flag_has_a_recipe_key(tmp_path):
    """Drift guard: a flag added to `edgekiln build` must be accepted in recipes, with the same choices."""
    import click

    from toolchain.cli import build

    refused_by_build = {"per_channel", "per_tensor", "activation_type", "symmetric", "asymmetric"}
    for param in build.params:
        if not isinstance(param, click.Option) or "--config" in param.opts or "--help" in param.opts:
            continue
        for option in param.opts + param.secondary_opts:
            key = option.lstrip("-")
            if not option.startswith("--") or key.replace("-", "_") in refused_by_build:
                continue
            probe = write(tmp_path, "probe.yaml", f"{key}: [[[not a value]]]\n")
            assert "unknown key" not in error_of(probe), option
            if isinstance(param.type, click.Choice):
                probe = write(tmp_path, "probe.yaml", f"{key}: bogus\n")
                assert error_of(probe).endswith(f"must be one of {', '.join(param.type.choices)}, got 'bogus'."), option


# ---- errors: file:line: key ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_key_names_line_and_suggests(tmp_path, fmt):
    path = recipe_with(tmp_path, fmt, "calib_sise", "3")
    assert error_of(path) == f"{path}:4: unknown key 'calib_sise' (did you mean 'calib-size'?)."
    path = recipe_with(tmp_path, fmt, "zzz", "3")
    assert error_of(path) == f"{path}:4: unknown key 'zzz'."


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_type_names_line_and_value(tmp_path, fmt):
    path = recipe_with(tmp_path, fmt, "max-drop", '"lots"')
    assert error_of(path) == f"{path}:4: 'max-drop' must be a number, got 'lots'."
    path = recipe_with(tmp_path, fmt, "calib_size", "2.5")
    assert error_of(path) == f"{path}:4: 'calib_size' must be a whole number, got 2.5."
    path = recipe_with(tmp_path, fmt, "lowrank", '"yes"')
    assert error_of(path) == f"{path}:4: 'lowrank' must be true or false, got 'yes'."
    path = recipe_with(tmp_path, fmt, "holdout", "true")  # a flag is not a count
    assert error_of(path).startswith(f"{path}:4: 'holdout' must be a whole number, got true")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_target_names_line_and_lists_the_known_ones(tmp_path, fmt):
    path = recipe_with(tmp_path, fmt, "target", '"rpi44"')
    message = error_of(path)
    assert message.startswith(f"{path}:4: 'target' names an unknown target 'rpi44' (did you mean 'rpi4'?); "
                              "known targets: x86, ")
    assert "jetson-nano" in message and "mcu" in message


def test_targets_take_an_optional_precision(tmp_path):
    path = write(tmp_path, "r.toml", 'targets = ["x86", "x86:int8", "rpi4:FP16"]\n')
    assert load_recipe(path).values["targets"] == ["x86", "x86:int8", "rpi4:FP16"]
    path = write(tmp_path, "r.toml", 'holdout = 1\ntargets = ["x86:int4"]\n')
    assert error_of(path) == (f"{path}:2: 'targets' names an unknown precision 'int4' in 'x86:int4'; "
                              "precisions: fp32, fp16, int8.")
    path = write(tmp_path, "r.yaml", "targets:\n  - x86\n  - x86:fp32\n")  # fp32 is x86's own precision
    assert error_of(path) == f"{path}:3: 'targets' lists 'x86:fp32' twice."


def test_bad_target_in_a_yaml_block_list_points_at_its_item(tmp_path):
    path = write(tmp_path, "r.yaml", "targets:\n  - x86\n  - rpi4\n  - jetson-nanoo\n")
    assert error_of(path).startswith(f"{path}:4: 'targets' names an unknown target 'jetson-nanoo' "
                                     "(did you mean 'jetson-nano'?)")
    path = write(tmp_path, "r.yaml", "targets:\n  - x86\n  - 3\n")
    assert error_of(path) == f"{path}:3: 'targets' item 2 must be text, got 3."
    path = write(tmp_path, "r.yaml", "targets:\n  - x86\n  - rpi4\n  - x86\n")
    assert error_of(path) == f"{path}:4: 'targets' lists 'x86' twice."


@pytest.mark.parametrize("fmt", FORMATS)
def test_choices_are_listed(tmp_path, fmt):
    path = recipe_with(tmp_path, fmt, "lowrank-mode", '"fast"')
    assert error_of(path) == f"{path}:4: 'lowrank-mode' must be one of energy, ratio, budget, got 'fast'."
    path = recipe_with(tmp_path, fmt, "method", '"max"')
    assert error_of(path) == f"{path}:4: 'method' must be one of minmax, entropy, percentile, got 'max'."


@pytest.mark.parametrize(("key", "value", "words"), [
    ("calib-size", "0", "must be at least 1, got 0"),
    ("holdout", "-1", "must be at least 0, got -1"),
    ("bench-iterations", "-5", "must be at least 0, got -5"),
    ("max-drop", "-0.5", "must be at least 0, got -0.5"),
    ("min-cosine", "0", "must be greater than 0, got 0"),
    ("min-cosine", "1.5", "must be at most 1, got 1.5"),
    ("opset", "99", "must be at most 23, got 99"),
    ("atol", "nan", "must be a finite number, got nan"),
    ("lowrank-energy", "1.0", "must be less than 1, got 1.0"),
])
def test_counts_and_ranges_the_cli_would_refuse(tmp_path, key, value, words):
    path = recipe_with(tmp_path, "toml", key, value)
    assert error_of(path) == f"{path}:4: '{key}' {words}."


def test_duplicate_yaml_key_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "r.yaml", "calib-size: 64\ntargets: [x86]\n\ncalib-size: 128\n")
    assert error_of(path) == f"{path}:4: duplicate key 'calib-size' (first set on line 1)."
    nested = write(tmp_path, "n.yaml", "preprocess:\n  height: 28\n  height: 32\n")
    assert error_of(nested) == f"{nested}:3: duplicate key 'height' (first set on line 2)."


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_spellings_of_one_option_are_refused(tmp_path, fmt):
    name, template = FORMATS[fmt]
    path = write(tmp_path, name, template.format(key="calib-size", value="8").replace("seed", "calib_size"))
    assert error_of(path) == f"{path}:5: 'calib_size' sets the same option as 'calib-size' on line 4."
    path = write(tmp_path, name, template.format(key="no-verify", value="true").replace("seed", "verify")
                 .replace("= 1", "= true").replace(": 1", ": true"))
    assert error_of(path) == f"{path}:5: 'verify' sets the same option as 'no-verify' on line 4."


def test_duplicate_toml_key_is_a_syntax_error_with_its_line(tmp_path):
    path = write(tmp_path, "r.toml", 'holdout = 1\ntargets = ["x86"]\nholdout = 2\n')
    assert error_of(path).startswith(f"{path}:3: invalid TOML: ")


def test_syntax_errors_carry_the_parsers_line(tmp_path):
    path = write(tmp_path, "r.yaml", "targets: [x86\nholdout: 3\n")
    assert error_of(path) == (f"{path}:2: invalid YAML: expected ',' or ']', but got ':' "
                              "(while parsing a flow sequence on line 1).")
    path = write(tmp_path, "r.yaml", "targets: [x86]\nholdout: 3\n  bad: indent\n")
    assert error_of(path).startswith(f"{path}:3: invalid YAML: mapping values are not allowed here")
    path = write(tmp_path, "r.toml", 'targets = ["x86"]\n\nholdout = = 3\n')
    assert error_of(path) == f"{path}:3: invalid TOML: Invalid value (column 11)."
    path.write_text("targets = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert error_of(path) == f"{path}: invalid TOML: nested too deeply."


def test_yaml_never_builds_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, "r.yaml", f"holdout: 3\nsource: !!python/object/apply:os.system ['touch {marker}']\n")
    assert error_of(path).startswith(f"{path}:2: invalid YAML: could not determine a constructor")
    assert not marker.exists()


def test_nested_tables_are_refused_except_the_table_options(tmp_path):
    path = write(tmp_path, "r.toml", 'targets = ["x86"]\n\n[lowrank]\nmode = "budget"\n')
    assert error_of(path).startswith(f"{path}:3: 'lowrank' is a nested table; recipe options are flat")
    path = write(tmp_path, "r.yaml", "targets: [x86]\nbuild:\n  holdout: 3\n")
    assert error_of(path).startswith(f"{path}:2: 'build' is a nested table")


def test_preprocess_preset_or_spec(tmp_path):
    path = write(tmp_path, "r.yaml", "preprocess: imagenett\n")
    assert error_of(path).startswith(f"{path}:1: 'preprocess' names an unknown preset 'imagenett' "
                                     "(did you mean 'imagenet'?); presets: imagenet, ")
    path = write(tmp_path, "r.yaml", "holdout: 3\npreprocess:\n  height: 28\n  width: 28\n  channels: 4\n")
    message = error_of(path)
    assert message.startswith(f"{path}:5: 'preprocess' is not a valid spec: ") and "channels" in message
    path = write(tmp_path, "r.toml", "[preprocess]\nheight = 28\nwidth = 28\nchannels = 1\nmean = 0.5\n")
    assert error_of(path).startswith(f"{path}:5: 'preprocess' is not a valid spec: ")


def test_empty_value_other_table_and_per_target_options(tmp_path):
    path = write(tmp_path, "r.yaml", "targets: [x86]\ncalib:\n")
    assert error_of(path) == f"{path}:2: 'calib' has no value; give one or remove the line."
    path = write(tmp_path, "r.yaml", "targets: [x86]\nper-channel: true\n")
    assert error_of(path).startswith(f"{path}:2: 'per-channel' is chosen per target by build")
    path = write(tmp_path, "r.yaml", "lowrank-rank: [fc1=0]\n")
    assert error_of(path).startswith(f"{path}:1: 'lowrank-rank' expects NODE=RANK items")
    path = write(tmp_path, "r.yaml", "model-kwargs: '{not json'\n")
    assert error_of(path).startswith(f"{path}:1: 'model-kwargs' is not valid JSON")


def test_the_first_problem_by_line_is_reported(tmp_path):
    path = write(tmp_path, "r.yaml", "holdout: -1\ncalib_sise: 3\ntargets: [nope]\n")
    assert error_of(path).startswith(f"{path}:1: 'holdout' must be at least 0")


# ---- errors: the file itself -------------------------------------------------------------------------


def test_bad_files(tmp_path):
    assert error_of(tmp_path / "missing.yaml") == f"{tmp_path / 'missing.yaml'}: no such recipe file."
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert error_of(folder) == f"{folder}: is a folder, not a recipe file."
    path = write(tmp_path, "r.json", "{}")
    assert error_of(path) == f"{path}: unknown recipe format '.json'; accepted: .yaml, .yml, .toml."
    for name in ("empty.yaml", "empty.toml"):
        path = write(tmp_path, name, "")
        assert error_of(path) == f"{path}: the recipe is empty."
    path = write(tmp_path, "comments.yml", "# nothing yet\n\n")
    assert error_of(path).startswith(f"{path}: the recipe is empty")
    path = write(tmp_path, "comments.toml", "# nothing yet\n")
    assert error_of(path).startswith(f"{path}: the recipe is empty")
    path = tmp_path / "binary.toml"
    path.write_bytes(b"holdout = 3\n\x00\x01\x02")
    assert error_of(path) == f"{path}:2: binary data; a recipe is a YAML or TOML text file."
    path = tmp_path / "latin1.yaml"
    path.write_bytes("holdout: 3\nsource: café.onnx\n".encode("latin-1"))
    assert error_of(path) == f"{path}:2: not UTF-8 text (byte 0xe9); save the recipe as UTF-8."
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_RECIPE_BYTES // 10 + 1))
    assert error_of(path) == f"{path}: too large for a recipe (over 1 MiB)."
    path = write(tmp_path, "list.yaml", "- targets: [x86]\n")
    assert error_of(path) == f"{path}:1: a recipe is a mapping of 'option: value' lines, not a list."


def test_odd_yaml(tmp_path):
    cases = {
        "holdout: 3\nsource: a\x07b\n": "2: invalid YAML: control character U+0007 is not allowed.",
        "holdout: 3\n1: x\n": "2: '1' is not an option name.",
        "? [a, b]\n: 3\n": "1: a key must be an option name, not a list or mapping.",
        "just text\n": "1: a recipe is a mapping of 'option: value' lines, not the value 'just text'.",
        "holdout: 3\n---\nholdout: 4\n": "2: invalid YAML: but found another document",
        "holdout: 2024-01-01\n": "1: 'holdout' must be a whole number, got 2024-01-01.",
        "targets: " + "[" * 50_000 + "]" * 50_000 + "\n": " invalid YAML: nested too deeply.",
    }
    for text, expected in cases.items():
        path = tmp_path / "r.yaml"
        path.write_text(text)
        assert error_of(path).startswith(f"{path}:{expected}"), text[:40]


def test_yaml_aliases_cannot_blow_up(tmp_path):
    """Nine levels of nine aliases is 9**9 items if expanded; each node is built once and shared."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "r.yaml"
    path.write_text("\n".join(lines + ["inputs: *l9", "model-kwargs: {x: *l9}"]) + "\n")
    assert error_of(path) == f"{path}:1: unknown key 'l0'."
    path.write_text("model-kwargs:\n" + "\n".join(f"  {line}" for line in lines) + "\n")
    assert load_recipe(path).values["model_kwargs"]["l9"][8][8][8][8][8][8][8][8][8][8] == 1


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes('\ufeffholdout = 3\n'.encode())
    assert load_recipe(path).values == {"holdout": 3}


def test_toml_key_lines_survive_multiline_values(tmp_path):
    path = write(tmp_path, "r.toml", '''
        targets = [
          "x86",  # a comment with = signs
          "rpi4",
        ]
        model-kwargs = """
        holdout = 1
        """
        "calib-size" = 4
        lowrank.mode = "budget"
        ''')
    message = error_of(path)
    assert message.startswith(f"{path}:5: 'model-kwargs' is not valid JSON"), message
    path.write_text(path.read_text().replace('"""\nholdout = 1\n"""', "'{}'"))
    assert error_of(path).startswith(f"{path}:7: 'lowrank' is a nested table")


def test_unreadable_file(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = write(tmp_path, "r.yaml", "holdout: 3\n")
    path.chmod(0)
    assert error_of(path).startswith(f"{path}: cannot read the recipe: ")


# ---- merging -----------------------------------------------------------------------------------------


def test_merge_precedence_typed_flag_over_recipe_over_default():
    recipe = {"holdout": 16, "targets": ["rpi4"], "quiet": True}
    cli = {"holdout": 128, "targets": ["x86"], "calib_size": None}
    merged = merge_recipe(recipe, cli, explicit={"targets"})
    assert merged == {"holdout": 16, "targets": ["x86"], "calib_size": None, "quiet": True}
    assert merge_recipe({}, cli, set()) == cli
    assert merge_recipe(recipe, {}, set()) == recipe


# ---- the real command --------------------------------------------------------------------------------


def test_cli_reports_a_bad_recipe_in_one_line_and_writes_nothing(tmp_path):
    recipe = write(tmp_path, "bad.yaml", "targets: [x86]\nholdout: 16\ncalib_sise: 3\n")
    out = tmp_path / "OUT"
    done = subprocess.run([sys.executable, "-m", "toolchain", "build", "-c", str(recipe), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert_one_line_error(done.returncode, done.stderr, "bad.yaml:3:", "calib_sise", "calib-size")
    assert not out.exists()
