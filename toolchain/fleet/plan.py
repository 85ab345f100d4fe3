"""A fleet's plan: each model's build plan (``toolchain.build_plan``) cut into tasks, with resources.

Per model: one ``prepare`` task (convert, simplify, low-rank: the FP32 ONNX, computed once), then,
depending on it, the ``reference`` measurement and one task per variant (compile + measure). A
dependent task restores its upstream stages from the shared stage cache instead of recomputing them.
Planning hashes inputs but runs and writes nothing (``--dry-run`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.build_plan import BuildRequest, PlannedStage
from toolchain.errors import ToolchainError
from toolchain.fleet.spec import FleetSpec

PREPARE = "prepare"
REFERENCE = "reference"
GIB = float(1 << 30)
# Ray resources a task asks for beyond one CPU, by backend and then by target (the fleet file's
# 'resources' table replaces a target's entry): onnx2tf + TensorFlow need memory; a TensorRT engine
# for 'cuda' is built on a GPU; Jetson bundles are finished on the device, so they need nothing here.
BACKEND_RESOURCES: dict[str, dict[str, float]] = {"tflite": {"memory": 2 * GIB}}
TARGET_RESOURCES: dict[str, dict[str, float]] = {"cuda": {"num_gpus": 1.0}}


@dataclass
class Task:
    """One unit of scheduling: ``stages`` in order, of which the last ``own`` are this task's work (the
    others are restored from the cache, or rebuilt if the cache lost them)."""

    model: str
    name: str
    request: BuildRequest
    stages: list[PlannedStage]
    own: int
    cache_root: Path
    depends_on: str | None = None
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.name}"

    @property
    def own_stages(self) -> list[PlannedStage]:
        return self.stages[-self.own:]

    @property
    def cached(self) -> bool:
        return all(stage.cached for stage in self.own_stages)


@dataclass
class ModelPlan:
    name: str
    line: int
    request: BuildRequest
    stages: list[PlannedStage]
    tasks: list[Task]
    decisions: list[str]


@dataclass
class FleetPlan:
    spec: FleetSpec
    output: Path
    cache_root: Path
    models: list[ModelPlan]

    @property
    def tasks(self) -> list[Task]:
        return [task for model in self.models for task in model.tasks]

    @property
    def targets(self) -> list[str]:
        names: list[str] = []
        for model in self.models:
            names += [v.name for v in model.request.variants if v.name not in names]
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"fleet": str(self.spec.path), "output": str(self.output), "cache": str(self.cache_root),
                "tasks": len(self.tasks), "cached": sum(t.cached for t in self.tasks),
                "models": [{"model": m.name, "tasks": [{"task": t.name, "stages": [s.name for s in t.own_stages],
                                                        "cached": t.cached, "resources": t.resources}
                                                       for t in m.tasks]} for m in self.models]}


def resources_for(variant: Any, table: dict[str, dict[str, float]]) -> dict[str, float]:
    name = variant.target.name
    if name in table:
        return dict(table[name])
    return {**BACKEND_RESOURCES.get(variant.target.backend, {}), **TARGET_RESOURCES.get(name, {})}


def _tasks(name: str, request: BuildRequest, stages: list[PlannedStage], cache_root: Path,
           table: dict[str, dict[str, float]]) -> list[Task]:
    shared = [s for s in stages if s.variant is None and s.kind != "measure"]
    reference = [s for s in stages if s.variant is None and s.kind == "measure"]
    tasks = [Task(name, PREPARE, request, shared, len(shared), cache_root),
             Task(name, REFERENCE, request, shared + reference, len(reference), cache_root, PREPARE)]
    for variant in request.variants:
        own = [s for s in stages if s.variant is variant]
        tasks.append(Task(name, variant.name, request, shared + own, len(own), cache_root, PREPARE,
                          resources_for(variant, table)))
    return tasks


def plan_fleet(spec: FleetSpec, output: Path, cache_root: Path, announce: Any = None) -> FleetPlan:
    """Plan every model (all up-front checks of ``edgekiln build`` included); a model that fails them
    fails the plan with one line naming the fleet file, the model's line and its name."""
    from calibration.folder import listings_reused
    from toolchain.api import build_request
    from toolchain.build import prepare

    models = []
    # Models usually share one calibration folder, which each model's checks and digests list several
    # times: list it once for the whole plan (the tasks list it afresh when they run).
    with listings_reused():
        for model in spec.models:
            try:
                # Planned with the fleet's own folder as output: build's checks of it (writable, not a folder
                # edgekiln did not make) are the fleet's; each model's real folder is set when it is assembled.
                request, cache = build_request(**{**model.values, "output": output, "cache_dir": cache_root})
                request, checked, stages = prepare(request, cache)
            except ToolchainError as exc:
                exc.message = f"{spec.path}:{model.line}: model '{model.name}': {exc.message}"
                raise
            models.append(ModelPlan(model.name, model.line, request, stages,
                                    _tasks(model.name, request, stages, cache_root, spec.resources),
                                    list(checked.notes)))
    if announce is not None:
        for line in decisions_by_text(models):
            announce(line)
    return FleetPlan(spec, output, cache_root, models)


def decisions_by_text(models: list[ModelPlan]) -> list[str]:
    """What the builds decided, each sentence once with the models it applies to (a fleet of hundreds
    of models shares its calibration folder and preprocessing: one line, not hundreds)."""
    by_text: dict[str, list[str]] = {}
    for model in models:
        for line in model.decisions:
            by_text.setdefault(line, []).append(model.name)
    lines = []
    for text, names in by_text.items():
        who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{who}: {text}")
    return lines


def plan_lines(plan: FleetPlan) -> list[str]:
    """The plan as text: models x targets, which stages are cached and how many tasks will run."""
    tasks = plan.tasks
    to_run = [t for t in tasks if not t.cached]
    lines = [f"fleet {plan.spec.path}: {len(plan.models)} models x {len(plan.targets)} targets "
             f"({', '.join(plan.targets)}), {len(tasks)} tasks: {len(to_run)} to run, {len(tasks) - len(to_run)} cached",
             f"cache {plan.cache_root}, output {plan.output}"]
    for model in plan.models:
        lines.append(f"  {model.name}")
        for task in model.tasks:
            stages = ", ".join(f"{s.name}{' (cached)' if s.cached else ''}" for s in task.own_stages)
            needs = f"  needs {task.resources}" if task.resources else ""
            lines.append(f"    {'cached' if task.cached else 'run   '}  {task.name}: {stages}{needs}")
    return lines


def plan_document(plan: FleetPlan) -> dict[str, Any]:
    """The plan as data (``fleet --dry-run --json``): what ``plan_lines`` says, per model and task."""
    return {"fleet": str(plan.spec.path), "targets": plan.targets, "cache": str(plan.cache_root),
            "output": str(plan.output),
            "models": [{"name": model.name, "tasks": [
                {"task": task.name, "cached": task.cached, "resources": task.resources,
                 "stages": [{"stage": s.name, "cached": s.cached} for s in task.own_stages]}
                for task in model.tasks]} for model in plan.models]}
