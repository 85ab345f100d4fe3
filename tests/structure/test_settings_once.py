"""Each setting is declared once (issue #16): the flags, recipe keys and API keywords come from the option groups.

A setting written by hand a second time (a click.option, a recipe field, an API parameter) shows up here as
a flag, key or keyword that no group declares, or as two groups declaring one keyword.
"""

from __future__ import annotations

import inspect

import click

from toolchain import api
from toolchain.api import build_settings
from toolchain.cli import build, compile_command, optimize
from toolchain.passes.registry import BUILD_PASSES, PASSES
from toolchain.recipe import CLI_ONLY_KEYS, _schema

# The few parameters each command writes itself: positional arguments and what only the CLI does.
HAND_WRITTEN = {"build": {"source", "recipe", "output", "dry_run", "quiet", "as_json"},
                "compile": {"model", "output", "backend", "target", "precision", "threads", "graph_optimization",
                            "as_json"},
                "optimize": {"model", "output", "as_json"}}


def _params(command: click.Command) -> set[str]:
    return {p.name for p in command.params}


def test_no_keyword_is_declared_by_two_groups():
    keywords = [s.keyword for s in build_settings()]
    assert len(keywords) == len(set(keywords)), sorted(k for k in keywords if keywords.count(k) > 1)


def test_build_flags_recipe_keys_and_api_keywords_are_one_list():
    generated = {s.keyword for s in build_settings()} | set(BUILD_PASSES)
    assert _params(build) - HAND_WRITTEN["build"] == generated
    recipe_keywords = {key for key in _schema().keys if key not in _schema().aliases} - {"source", "output"}
    assert recipe_keywords - CLI_ONLY_KEYS - {"json_"} == generated
    signature = inspect.signature(api.build_request).parameters
    assert set(signature) - {"source", "output"} == generated


def test_compile_and_optimize_flags_are_generated():
    from toolchain.options import keywords_of
    from toolchain.settings import QuantSettings, SampleSettings, VerifySettings

    backend = {s.keyword for s in build_settings()} - {s.keyword for s in build_settings()
                                                     if s.group.__module__.startswith("toolchain")}
    assert _params(compile_command) - HAND_WRITTEN["compile"] == set(
        keywords_of(VerifySettings, SampleSettings, QuantSettings)) | backend
    passes = {entry.name for entry in PASSES} | {k for entry in PASSES if entry.config_class()
                                                 for k in keywords_of(entry.config_class())}
    assert _params(optimize) - HAND_WRITTEN["optimize"] == passes | {"min_cosine"} | set(
        keywords_of(VerifySettings, SampleSettings))
