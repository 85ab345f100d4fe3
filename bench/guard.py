"""The accuracy guard's cost (issue #18, item 3): guarded vs unguarded INT8 calibration, and the guard as it
was (a quantizer call per layer for its ranking, whole-model runs, every fallback attempt compared on every
held-out sample, every fallback step tried) vs now (single-layer models cut from one quantization with only
their downstream part run; a fallback attempt stops once it cannot pass; a model that misses by far with the
most float layers allowed is refused without the steps between).

    python -m bench.guard          # bench/guard.md + bench/guard.json (about 15 minutes on 2 cores)
    python -m bench.guard --profile   # bench/guard_profile.md: where one guarded calibration's time goes (1 min)

Models: the ResNet-18- and MobileNetV2-sized CNNs of ``bench/run.py`` (random weights, BatchNorm settled),
64 calibration + 32 held-out Fashion-MNIST images upsampled to 224x224, ``api.calibrate`` for target ``x86``
in this process. Two budgets: the default (``--max-drop 1 --min-cosine 0.99``) and a strict one
(``--min-cosine 0.99999``) that no INT8 model meets, so the guard runs its whole fallback schedule: the
worst case. "old guard" swaps in the previous ranking (kept here, verbatim in effect), turns early
stopping off and walks every fallback step; "every step" is the shipped guard walking every step too
(``refuse_hopeless=False``, as before this change). All run in the same rounds; the record checks the
shipped guard's choices against the old guard's.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import data, machine, run

BENCH_DIR = Path(__file__).resolve().parent
MODELS = ("resnet18", "mobilenet_v2")
ROUNDS = 3
CALIBRATION, HOLDOUT = 64, 32
BUDGETS = {"default": {"max_drop": 1.0, "min_cosine": 0.99}, "strict": {"max_drop": 1.0, "min_cosine": 0.99999}}


def old_layer_sensitivity(model, ranges, config, feeds, reference=None, bias_source=None):
    """The ranking before this change: ORT's quantizer once per layer, every single-layer model run whole."""
    from toolchain.passes.quantize import quantizable_nodes, quantize_static
    from toolchain.quality import sample_cosines
    from toolchain.sensitivity import SENSITIVITY_SAMPLES, concatenated, run_all, with_float_biases

    subset = list(feeds)[:SENSITIVITY_SAMPLES]
    subset_reference = concatenated(run_all(reference if reference is not None else model, subset))
    layers = quantizable_nodes(model)
    scores = []
    for node in layers:
        others = [n.name for n in layers if n.name != node.name]
        single = quantize_static(with_float_biases(model, bias_source, others), ranges,
                                 config.model_copy(update={"nodes_to_quantize": (node.name,), "nodes_to_exclude": ()}))
        outputs = concatenated(run_all(single, subset, config))
        damage = max(1.0 - float(np.nan_to_num(sample_cosines(subset_reference[n], outputs[n]), nan=-1.0).mean())
                     for n in outputs)
        scores.append((node.name, node.op_type, damage))
    return sorted(scores, key=lambda item: -item[2])


@contextmanager
def ranking(implementation: Callable | None, spent: list[float], every_step: bool = False):
    """Run the guard with ``implementation`` as its ranking (None: the current one), timing the ranking.
    With the old ranking, fallback attempts are also compared on every sample, as before early stopping, and
    every fallback step is tried; ``every_step`` walks every step with the current ranking."""
    from functools import partial

    from toolchain import quant_guard
    from toolchain.passes import calibrate

    current = quant_guard.layer_sensitivity
    chosen = implementation or current
    guard = calibrate.guarded_quantize
    if implementation is not None:
        calibrate.guarded_quantize = partial(guard, stop_early=False, refuse_hopeless=False)
    elif every_step:
        calibrate.guarded_quantize = partial(guard, refuse_hopeless=False)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return chosen(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    quant_guard.layer_sensitivity = timed
    try:
        yield
    finally:
        quant_guard.layer_sensitivity = current
        calibrate.guarded_quantize = guard


def calibrate_once(fp32: Path, samples: Path, guard: bool, budget: dict, implementation: Callable | None,
                   work: Path, every_step: bool = False) -> dict:
    from toolchain import api
    from toolchain.errors import VerificationError

    spent: list[float] = []
    outcome: dict = {}
    started = time.perf_counter()
    with ranking(implementation, spent, every_step):
        try:
            result = api.calibrate(fp32, work / "int8.onnx", calib=samples, target="x86", calib_size=CALIBRATION,
                                   holdout=HOLDOUT, guard=guard, no_cache=True, **budget)
            report = result.guard.to_dict() if result.guard else None
            outcome = {"written": True}
        except VerificationError as error:
            report = getattr(error, "report", None)
            outcome = {"written": False, "refusal": str(error)[:300]}
    outcome["seconds"] = time.perf_counter() - started
    outcome["ranking_seconds"] = sum(spent)
    if report:
        outcome["attempts"] = [a["kept_float"] for a in report["attempts"]]
        outcome["ranking"] = [s["node"] for s in report["sensitivity"]]
        outcome["scores"] = [s["score"] for s in report["sensitivity"]]
    return outcome


def variants() -> dict[str, tuple[bool, str, Callable | None, bool]]:
    """name -> (guarded, budget, ranking implementation (None: current), every fallback step)."""
    found = {"unguarded": (False, "default", None, False)}
    for budget in BUDGETS:
        found[f"guarded, {budget} budget"] = (True, budget, None, False)
        found[f"guarded, {budget} budget, every step"] = (True, budget, None, True)
        found[f"guarded, {budget} budget, old guard"] = (True, budget, old_layer_sensitivity, False)
    return found


def measure(name: str) -> dict:
    fp32 = run.cnn_fp32(name, "fashion")
    calib = data.cnn_images("fashion", CALIBRATION, "calibration", run.SEED)
    held = data.cnn_images("fashion", HOLDOUT, "holdout", run.SEED)
    samples = run._api_arrays(f"guard-{name}", calib, held).source
    runs: dict[str, list[dict]] = {v: [] for v in variants()}
    order = list(variants())
    for round_index in range(ROUNDS):
        shift = round_index % len(order)
        for variant in order[shift:] + order[:shift]:  # rotate, so no variant always runs first
            guard, budget, implementation, every_step = variants()[variant]
            with tempfile.TemporaryDirectory(prefix="edgekiln-bench-guard-") as work:
                runs[variant].append(calibrate_once(fp32, samples, guard, BUDGETS[budget], implementation, Path(work),
                                                    every_step))
            print(f"[guard] {name} round {round_index + 1} {variant}: {runs[variant][-1]['seconds']:.1f} s",
                  file=sys.stderr)
    return {"model": name, "runs": runs}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summary(result: dict) -> dict:
    runs = result["runs"]
    plain = [r["seconds"] for r in runs["unguarded"]]
    rows = {}
    for variant, found in runs.items():
        ratios = [r["seconds"] / p for r, p in zip(found, plain)]
        rows[variant] = {"median_s": _median([r["seconds"] for r in found]), "x_unguarded": _median(ratios),
                         "ranking_s": _median([r["ranking_seconds"] for r in found]),
                         "written": found[0]["written"], "attempts": len(found[0].get("attempts", [])),
                         "kept_float": (found[0].get("attempts") or [[]])[-1]}
    same, score_diff = {}, {}
    for budget in BUDGETS:
        new, old = runs[f"guarded, {budget} budget"], runs[f"guarded, {budget} budget, old guard"]
        # The shipped guard may skip fallback steps, so its attempts differ; what it hands over (or refuses
        # with) must not: the same ranking, the same layers kept in float, the same outcome.
        same[budget] = all(a.get("ranking") == b.get("ranking") and (a.get("attempts") or [[]])[-1]
                           == (b.get("attempts") or [[]])[-1] and a["written"] == b["written"]
                           for a, b in zip(new, old))
        score_diff[budget] = max((abs(x - y) for a, b in zip(new, old)
                                  for x, y in zip(a.get("scores", []), b.get("scores", []))), default=0.0)
    return {"rows": rows, "same_choice": same, "score_diff": score_diff}


def _load(load: tuple[float, float, float] | None) -> str:
    return "unknown" if load is None else " / ".join(f"{v:.1f}" for v in load)


def markdown(record: dict) -> str:
    lines = ["# The accuracy guard's cost (issue #18, item 3)", "",
             f"Generated by `python -m bench.guard` ({record['date']}, {record['minutes']:.1f} min) at commit "
             f"`{record['commit']}`; raw numbers in `bench/guard.json`. Machine: {record['machine']['cpu']['model']} "
             f"({record['machine']['cpu']['logical_cpus']} logical CPUs, VNNI: {record['machine']['cpu']['vnni']}), "
             f"load average {_load(record['load'])} at the start (shared, so timings are noisy: {ROUNDS} rounds, "
             "variants in rotating order, medians; ratios are per round).", "",
             __doc__.split("\n\n", 2)[2].strip(), ""]
    for result in record["results"]:
        found = summary(result)
        lines += [f"## {run.TITLES[result['model']]}", "",
                  "| variant | wall s (median) | x unguarded (median of rounds) | of which ranking s | outcome |",
                  "|---|---:|---:|---:|---|"]
        for variant, row in found["rows"].items():
            outcome = "written" if row["written"] else "refused"
            if row["attempts"]:
                outcome += f", {row['attempts']} attempt(s), kept in float: {len(row['kept_float'])}"
            lines.append(f"| {variant} | {row['median_s']:.1f} | {row['x_unguarded']:.2f}x | "
                         f"{row['ranking_s']:.1f} | {outcome} |")
        lines += ["", "The shipped guard against the old guard: same ranking order, same final layers kept in "
                  "float and same outcome, "
                  "every round: " + ", ".join(f"{b} budget {'yes' if s else '**no**'}"
                                              for b, s in found["same_choice"].items())
                  + "; largest difference of a layer's ranking score: "
                  + ", ".join(f"{b} budget {d:.1e}" for b, d in found["score_diff"].items()), ""]
        plain = found["rows"]["unguarded"]["median_s"]
        lines += ["The guard's own cost (guarded median minus unguarded median): " + "; ".join(
            f"{b} budget {found['rows'][f'guarded, {b} budget']['median_s'] - plain:.1f} s as shipped, "
            f"{found['rows'][f'guarded, {b} budget, every step']['median_s'] - plain:.1f} s "
            f"every step, "
            f"{found['rows'][f'guarded, {b} budget, old guard']['median_s'] - plain:.1f} s old guard" for b in BUDGETS)
            + ". Target (issue #18): a guarded compile at most 2x the unguarded one: "
            + ("met" if found["rows"]["guarded, default budget"]["x_unguarded"] <= 2 else "**missed**") + ".", ""]
        lines += [_what_stops_it(found["rows"]), ""]
    return "\n".join(lines) + "\n"


def _what_stops_it(rows: dict) -> str:
    """Arithmetic on the medians above: how far each part of the shipped guard alone stays from 2x."""
    plain = rows["unguarded"]["median_s"]
    shipped = rows["guarded, default budget"]
    ranking = shipped["ranking_s"]
    attempts = shipped["median_s"] - plain - ranking
    return (f"What stops it (default budget, medians above): the ranking takes {ranking:.1f} s and the fallback "
            f"attempts {attempts:.1f} s on top of {plain:.1f} s unguarded. With free attempts the ranking alone "
            f"gives {(plain + ranking) / plain:.2f}x, with a free ranking the attempts alone {(plain + attempts) / plain:.2f}x: "
            f"2x needs both together under {plain:.1f} s, i.e. cut by {(ranking + attempts) / plain:.1f} times. "
            "The ranking is one ONNX Runtime run per layer and held-out sample of the model downstream of the layer "
            "(batching those runs measured no faster); each attempt is one quantizer call plus held-out runs "
            "(bench/guard_profile.md). What would: ranking on fewer samples or on a cheaper per-layer proxy, "
            "which risks choosing other layers than the measured ones, and attempts cut from one quantization "
            "as the ranking's single-layer models already are (about 0.5 s of quantizer call each).")


# Where a guarded calibration's time goes: (label, module path, function name) read from one cProfile run.
PROFILED = (("the whole calibrate call", "toolchain/api.py", "calibrate"),
            ("the guard (guarded_quantize)", "toolchain/quant_guard.py", "guarded_quantize"),
            ("guard: its per-layer ranking", "toolchain/sensitivity.py", "layer_sensitivity"),
            ("guard: its fallback attempts' checks", "toolchain/quant_guard.py", "__call__"),
            ("ONNX Runtime quantizer calls (quantize_static)", "toolchain/passes/quantize.py", "quantize_static"),
            ("quantizer: per-channel weight scales (ORT's Python loop over channels)", "onnxruntime/quantization/qdq_quantizer.py",
             "_calc_initializer_quant_params"),
            ("ONNX Runtime session creation", "onnxruntime/capi/onnxruntime_inference_collection.py",
             "_create_inference_session"),
            ("serializing each model for its session", "toolchain/onnx_io.py", "serialized_if_small"),
            ("ONNX Runtime inference runs", "onnxruntime/capi/onnxruntime_inference_collection.py", "run"))


def profile(name: str = "resnet18") -> dict:
    """One guarded calibration (default budget) under cProfile: calls and cumulative seconds of ``PROFILED``
    (profiling slows Python-heavy parts most, so the shares are a breakdown, not timings)."""
    import cProfile
    import pstats

    fp32 = run.cnn_fp32(name, "fashion")
    calib = data.cnn_images("fashion", CALIBRATION, "calibration", run.SEED)
    held = data.cnn_images("fashion", HOLDOUT, "holdout", run.SEED)
    samples = run._api_arrays(f"guard-{name}", calib, held).source
    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-guard-") as work:
        unguarded = calibrate_once(fp32, samples, False, BUDGETS["default"], None, Path(work))
        profiler = cProfile.Profile()
        profiler.enable()
        guarded = calibrate_once(fp32, samples, True, BUDGETS["default"], None, Path(work))
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for label, path, function in PROFILED:
        found = [(calls, cumulative) for (file, _, func), (_, calls, _, cumulative, _) in stats.items()
                 if file.endswith(path) and func == function]
        rows.append({"part": label, "calls": sum(c for c, _ in found), "seconds": sum(t for _, t in found)})
    return {"model": name, "unguarded_s": unguarded["seconds"], "guarded_s": guarded["seconds"],
            "attempts": len(guarded.get("attempts", [])), "written": guarded["written"], "rows": rows}


def profile_markdown(record: dict) -> str:
    found = record["profile"]
    lines = ["# Where the accuracy guard's time goes (issue #18, item 3)", "",
             f"Generated by `python -m bench.guard --profile` ({record['date']}) at commit `{record['commit']}`; "
             f"raw numbers in `bench/guard_profile.json`. Machine: {machine.summary(record['machine'])}.", "",
             f"One `api.calibrate(target='x86')` of the {run.TITLES[found['model']]} with the default budget "
             f"(64 calibration + 32 held-out images), under cProfile: {found['guarded_s']:.1f} s "
             f"({'written' if found['written'] else 'refused'} after {found['attempts']} attempt(s)), against "
             f"{found['unguarded_s']:.1f} s unguarded without the profiler. Cumulative seconds; \"guard:\" rows are "
             "parts of the guard; the ONNX Runtime rows cut across the guard's and the calibration's.", "",
             "| part | calls | cumulative s |", "|---|---:|---:|"]
    lines += [f"| {row['part']} | {row['calls']} | {row['seconds']:.1f} |" for row in found["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:]) == ["--render"]:  # bench/guard.md again from guard.json
        (BENCH_DIR / "guard.md").write_text(markdown(json.loads((BENCH_DIR / "guard.json").read_text())))
        return 0
    if (argv if argv is not None else sys.argv[1:]) == ["--profile"]:  # bench/guard_profile.md
        record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": machine.commit(),
                  "machine": machine.describe(), "profile": profile()}
        (BENCH_DIR / "guard_profile.json").write_text(json.dumps(record, indent=1) + "\n")
        (BENCH_DIR / "guard_profile.md").write_text(profile_markdown(record))
        return 0
    started = time.perf_counter()
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": machine.commit(),
              "machine": machine.describe(), "load": machine.load_average(),
              "results": [measure(name) for name in MODELS]}
    record["minutes"] = (time.perf_counter() - started) / 60
    (BENCH_DIR / "guard.json").write_text(json.dumps(record, indent=1) + "\n")
    (BENCH_DIR / "guard.md").write_text(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
