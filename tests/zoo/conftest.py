"""Session fixtures of the model zoo: the photo folder, the users' model files, one build per (model, target).

The zoo runs when asked for: ``EDGEKILN_ZOO=1`` (``.ci/run`` sets it) or ``pytest -m zoo``; otherwise its
tests skip, so the default developer run stays fast. ``EDGEKILN_ZOO=full`` also runs the few (model,
target) pairs that take too long for CI today (``ZooModel.slow_targets`` says why). A model whose wheel is absent skips with the install
command. ``EDGEKILN_ZOO_DIR`` keeps the work folder (and its stage cache) between runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zoo import models as zoo_models
from zoo.models import ZooModel
from zoo.photos import INSTALL_HINT, PhotoSet, PhotosMissing, build_photo_set, subset
from zoo.runner import CliResult, read_report, run_cli, write_recipe

HERE = Path(__file__).resolve().parent
# The calibration folder has 81 images (27 photos); these split it 2:1 for ranges and edgekiln's own guard.
CALIB_SIZE = 54
HOLDOUT = 27
BENCH_ITERATIONS = 20


def _enabled(config: pytest.Config) -> bool:
    return os.environ.get("EDGEKILN_ZOO") in ("1", "full") or "zoo" in (config.getoption("markexpr", "") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = _enabled(config)
    skip = pytest.mark.skip(reason="model zoo: set EDGEKILN_ZOO=1 or run 'pytest -m zoo' "
                                   f"(needs: {zoo_models.INSTALL}; {INSTALL_HINT})")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.zoo)
            if not enabled:
                item.add_marker(skip)


@dataclass
class TargetBuild:
    model: ZooModel
    target: str
    result: CliResult
    output: Path

    @property
    def report(self) -> dict[str, Any] | None:
        return read_report(self.output)

    def variant(self) -> dict[str, Any] | None:
        report = self.report
        if not report:
            return None
        for entry in report.get("targets", []):
            wanted = self.target.split(":")
            if entry["target"] == wanted[0] and (len(wanted) == 1 or entry["precision"] == wanted[1]):
                return entry
        return None

    def artifact(self) -> Path | None:
        entry = self.variant()
        if entry is None:
            return None
        folder = self.output / entry["artifact"]
        return folder if (folder / "manifest.json").is_file() else None


@dataclass
class Zoo:
    root: Path
    photos: PhotoSet
    results: dict[str, Any] = field(default_factory=dict)
    _builds: dict[tuple[str, str], TargetBuild] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.root / "stage-cache"

    def calib_folder(self) -> Path:
        calib, _ = self.photos.split()
        return subset(self.photos, calib, self.root / "calib")

    def heldout_files(self) -> list[Path]:
        _, held = self.photos.split()
        return sorted(subset(self.photos, held, self.root / "heldout").iterdir())

    def source(self, model: ZooModel) -> Path:
        reason = model.missing()
        if reason:
            pytest.skip(reason)
        return zoo_models.source_for(model, self.root / "models")

    def recipe(self, model: ZooModel) -> list[str]:
        if model.preprocess is None:
            return []
        return ["-c", str(write_recipe(self.root / "recipes" / f"{model.key}.yaml",
                                       {"preprocess": model.preprocess}))]

    def build(self, model: ZooModel, target: str) -> TargetBuild:
        """``edgekiln build`` of one model for one target, as a user would type it (memoised)."""
        key = (model.key, target)
        if target in model.slow_targets and os.environ.get("EDGEKILN_ZOO") != "full":
            pytest.skip(f"{model.key} for {target}: {model.slow_targets[target]} (EDGEKILN_ZOO=full runs it)")
        if key not in self._builds:
            source = self.source(model)
            output = self.root / "builds" / model.key / target.replace(":", "-")
            output.parent.mkdir(parents=True, exist_ok=True)
            args = ["build", *zoo_models.source_args(model, source), "--target", target, *self.recipe(model),
                    "-o", str(output), "--cache-dir", str(self.cache), "--bench-iterations", str(BENCH_ITERATIONS)]
            if model.preprocess is not None:
                args += ["--calib", str(self.calib_folder()), "--calib-size", str(CALIB_SIZE),
                         "--holdout", str(HOLDOUT)]
            self._builds[key] = TargetBuild(model, target, run_cli(args, self.root), output)
        return self._builds[key]

    def record(self, model: str, section: str, values: dict[str, Any]) -> None:
        self.results.setdefault(model, {})[section] = values
        (self.root / "zoo-results.json").write_text(json.dumps(self.results, indent=1, sort_keys=True, default=str))


_SESSION: list[Zoo] = []


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    kept = os.environ.get("EDGEKILN_ZOO_DIR")
    root = Path(kept) if kept else tmp_path_factory.mktemp("zoo")
    root.mkdir(parents=True, exist_ok=True)
    try:
        photos = build_photo_set(root)
    except PhotosMissing as exc:
        pytest.skip(str(exc))
    session = Zoo(root.resolve(), photos)
    earlier = session.root / "zoo-results.json"
    if kept and earlier.is_file():  # a kept work folder accumulates measurements over partial runs
        session.results = json.loads(earlier.read_text())
    _SESSION.append(session)
    return session


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the zoo's measurements are, so a CI log points at them."""
    for session in _SESSION:
        path = session.root / "zoo-results.json"
        if path.is_file():
            terminalreporter.write_line(f"model zoo measurements: {path}")
            for model, sections in sorted(session.results.items()):
                for section, values in sorted(sections.items()):
                    terminalreporter.write_line(f"  {model} {section}: {json.dumps(values, default=str)[:300]}")
