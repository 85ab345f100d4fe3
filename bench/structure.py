"""Static measures of the code's structure, for a before/after comparison of a refactoring (issue #16).

    python3 bench/structure.py [--root CHECKOUT] [--json]

Parses toolchain/, backends/ and calibration/ with ``ast`` (toolchain/examples, the bundled sample model,
is skipped) and imports nothing from the project. Every number is a static, heuristic count of the text:

1. Parameter lists: the 8 functions with most parameters (positional + keyword-only, without self/cls
   and *args/**kwargs; **kwargs is noted). Then the CLI commands' parameters as Click sees them: their
   click.option/argument decorators plus those built by decorator helpers (functions in or imported into
   toolchain/cli.py, followed through helpers that use helpers). Options made in a loop/comprehension or
   by a ``cli.command(flags=...)`` factory cannot be counted: "generated (+N static)", N the rest.
2. In-function imports: import statements inside a function whose target is toolchain, backends or
   calibration (statements, not names): total and the 5 files with most.
3. Import arrows between groups (module-level and in-function imports, TYPE_CHECKING ones included):
   one per (statement, imported module); ``from pkg import sub`` points at pkg.sub when it is a module.
   "Upward" means against face -> pipeline -> backends -> passes -> calibration -> core (fleet and
   compress rank with pipeline, frontends with passes; arrows within one rank are not flagged).
4. Declarations of each setting (distinct file:line): a parameter with a default of that name, a click
   option whose flag spells it (--calib-size), an annotated class-body field (ClassVar skipped), or that
   string in a tuple/list/set or as a dict key of a module-level assignment (not inside Literal[...] or
   another subscript). Names are matched, not meanings: a result dataclass's ``seed`` counts too. In
   files whose path contains "lowrank", energy/target_ratio/min_parameters are the lowrank_* settings and
   a bare min_cosine is the pass's own (--lowrank-min-cosine), not counted. Flags generated at run time
   are not seen; the field they are generated from is.
5. Modules: .py files (__init__ included), and how many lie directly in toolchain/.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("toolchain", "backends", "calibration")
SKIPPED = ("toolchain/examples/",)
COMMANDS = ("build", "compile_command", "optimize", "calibrate", "convert")
FACE = {"api", "cli", "recipe", "face"}
PIPELINE = {"build", "build_plan", "build_steps", "build_checks", "stages", "commands", "stage_cache", "digests",
            "pipeline"}
RANK = {"face": 0, "pipeline": 1, "fleet": 1, "compress": 1, "backends": 2, "passes": 3, "frontends": 3,
        "calibration": 4, "core": 5}
SETTINGS = ("calib_size", "holdout", "max_drop", "min_cosine", "lowrank_energy", "lowrank_min_params",
            "lowrank_ratio", "dla_core", "flash_kb", "io_dtype", "preprocess", "seed", "task")
LOWRANK_NAMES = {"energy": "lowrank_energy", "min_parameters": "lowrank_min_params",
                 "target_ratio": "lowrank_ratio", "min_cosine": None}  # None: the pass's own setting
CLICK_PARAMS = {"option", "argument", "Option", "Argument", "version_option", "help_option"}
LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
Def = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Module:
    name: str  # dotted
    path: str  # relative to the root, posix
    tree: ast.Module
    is_package: bool


def load(root: Path) -> tuple[list[Module], set[str]]:
    """The modules measured (toolchain/examples skipped) and the names of all modules (import targets)."""
    modules, names = [], set()
    for file in sorted(f for package in PACKAGES for f in (root / package).rglob("*.py")):
        path = file.relative_to(root).as_posix()
        parts = path[:-3].split("/")
        is_package = parts[-1] == "__init__"
        names.add(name := ".".join(parts[:-1] if is_package else parts))
        if "__pycache__" not in path and not path.startswith(SKIPPED):
            modules.append(Module(name, path, ast.parse(file.read_text(encoding="utf-8"), path), is_package))
    return modules, names


def walk(node: ast.AST, stack: tuple[ast.AST, ...] = ()) -> Iterator[tuple[ast.AST, tuple[ast.AST, ...]]]:
    """Every node under ``node`` with the functions/classes that enclose it (outermost first)."""
    for child in ast.iter_child_nodes(node):
        yield child, stack
        inner = stack + (child,) if isinstance(child, Def | ast.ClassDef) else stack
        yield from walk(child, inner)


def import_targets(node: ast.Import | ast.ImportFrom, module: Module, known: set[str]) -> list[str]:
    """The project modules one import statement imports (``from pkg import sub`` -> pkg.sub if it exists)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return [n for n in dict.fromkeys(names) if n.split(".")[0] in PACKAGES]


def group(name: str) -> str:
    top, _, rest = name.partition(".")
    sub = rest.partition(".")[0]
    if top != "toolchain":
        return top
    return "face" if sub in FACE else "pipeline" if sub in PIPELINE else (
        sub if sub in ("passes", "fleet", "compress", "frontends") else "core")


def is_click_param(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLICK_PARAMS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "click")


def parameter_lists(modules: list[Module]) -> list[dict]:
    rows = []
    for m in modules:
        for node, stack in walk(m.tree):
            if isinstance(node, Def):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                rows.append({"function": ".".join([*(s.name for s in stack), node.name]),  # type: ignore[attr-defined]
                             "where": f"{m.path}:{node.lineno}", "parameters": len(names),
                             "kwargs": a.kwarg is not None})
    return sorted(rows, key=lambda r: -r["parameters"])[:8]


def click_commands(modules: list[Module]) -> dict[str, dict]:
    """Parameters of the CLI commands: {name: {"static": n, "generated": bool}}."""
    by_name = {m.name: m for m in modules}
    cli = by_name.get("toolchain.cli")
    if cli is None:
        return {}
    funcs: dict[str, Def] = {}
    for stmt in cli.tree.body:  # helpers imported into cli.py from the project (json_flag), then its own
        if isinstance(stmt, ast.ImportFrom) and stmt.module in by_name:
            source = {f.name: f for f in by_name[stmt.module].tree.body if isinstance(f, Def)}
            funcs.update({a.asname or a.name: source[a.name] for a in stmt.names if a.name in source})
    funcs.update({f.name: f for f in cli.tree.body if isinstance(f, Def)})
    memo: dict[str, tuple[int, bool]] = {}

    def helper(name: str, seen: frozenset[str]) -> tuple[int, bool]:
        if name not in memo:
            fn, count, generated = funcs[name], 0, False
            looped = {id(n) for loop in ast.walk(fn) if isinstance(loop, LOOPS) for n in ast.walk(loop)}
            for node in ast.walk(fn):
                if is_click_param(node):
                    count += 1
                    first = node.args[0] if node.args else None  # type: ignore[attr-defined]
                    generated |= id(node) in looped or not (isinstance(first, ast.Constant)
                                                            and isinstance(first.value, str))
                elif isinstance(node, ast.Name) and node.id in funcs and node.id not in seen | {name}:
                    sub, sub_generated = helper(node.id, seen | {name})
                    count += sub
                    generated |= sub_generated or (sub > 0 and id(node) in looped)
            memo[name] = (count, generated)
        return memo[name]

    result = {}
    for command in COMMANDS:
        fn = funcs.get(command)
        if fn is None:
            continue
        count, generated = sum(map(is_click_param, fn.decorator_list)), False
        for deco in (d for d in fn.decorator_list if not is_click_param(d)):  # helpers, cli.command(flags=...)
            keywords = deco.keywords if isinstance(deco, ast.Call) else []
            generated |= any(kw.arg == "flags" for kw in keywords)
            refs = [deco, *(n for kw in keywords for n in ast.walk(kw.value))]
            for ref in (r.func if isinstance(r, ast.Call) else r for r in refs):
                if isinstance(ref, ast.Name) and ref.id in funcs:
                    sub, sub_generated = helper(ref.id, frozenset())  # a generated helper's count means little
                    count, generated = count + (0 if sub_generated else sub), generated or sub_generated
        result[command] = {"static": count, "generated": generated}
    return result


def imports(modules: list[Module], known: set[str]) -> tuple[dict, dict]:
    nested: Counter[str] = Counter()
    arrows: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for m in modules:
        for node, stack in walk(m.tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = import_targets(node, m, known)
            local = any(isinstance(s, Def) for s in stack)
            if targets and local:
                nested[m.path] += 1
            for target in targets:
                pair = (group(m.name), group(target))
                if pair[0] != pair[1]:
                    arrows[pair]["in_function" if local else "module_level"] += 1
                    arrows[pair][f"{m.name} -> {target}"] += 1
    in_function_imports = {"total": sum(nested.values()), "top_files": dict(nested.most_common(5))}
    matrix = {f"{a}->{b}": {"count": c["module_level"] + c["in_function"], "module_level": c["module_level"],
                            "in_function": c["in_function"], "upward": RANK[a] > RANK[b],
                            "modules": {k: v for k, v in c.most_common() if "->" in k}}
              for (a, b), c in sorted(arrows.items())}
    return in_function_imports, matrix


def settings(modules: list[Module]) -> dict[str, list[str]]:
    found: dict[str, dict[str, str]] = {s: {} for s in SETTINGS}

    def note(name: str, m: Module, line: int, kind: str) -> None:
        setting = LOWRANK_NAMES.get(name, name) if "lowrank" in m.path else name
        if setting in found:
            found[setting].setdefault(f"{m.path}:{line}", kind)

    for m in modules:
        for node, stack in walk(m.tree):
            if isinstance(node, Def):
                a = node.args
                positional = a.posonlyargs + a.args
                defaulted = positional[len(positional) - len(a.defaults):] + [
                    arg for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
                for arg in defaulted:
                    note(arg.arg, m, arg.lineno, "param")
            elif is_click_param(node):
                flags = [p[2:].replace("-", "_") for c in node.args  # type: ignore[attr-defined]
                         if isinstance(c, ast.Constant) and isinstance(c.value, str)
                         for p in c.value.split("/") if p.startswith("--")]
                for flag in (f for f in flags if f in found):
                    found[flag].setdefault(f"{m.path}:{node.lineno}", "option")
            elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and stack
                  and isinstance(stack[-1], ast.ClassDef) and node in stack[-1].body
                  and "ClassVar" not in ast.unparse(node.annotation)):
                note(node.target.id, m, node.lineno, "field")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not stack and node.value is not None:
                typing = {id(n) for sub in ast.walk(node.value) if isinstance(sub, ast.Subscript)
                          for n in ast.walk(sub.slice)}  # Literal["a", "b"] is a type, not a key tuple
                for part in (p for p in ast.walk(node.value) if id(p) not in typing):
                    strings = part.keys if isinstance(part, ast.Dict) else (
                        part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [])
                    for s in strings:
                        if isinstance(s, ast.Constant) and isinstance(s.value, str):
                            note(s.value, m, s.lineno, "key")
    return {s: [f"{where} {kind}" for where, kind in places.items()] for s, places in found.items()}


def measure(root: Path) -> dict:
    modules, known = load(root)
    in_function_imports, arrows = imports(modules, known)
    return {"root": str(root), "largest_parameter_lists": parameter_lists(modules),
            "click_commands": click_commands(modules), "in_function_imports": in_function_imports,
            "arrows": arrows, "settings": settings(modules),
            "modules": {"total": len(modules),
                        "directly_in_toolchain": sum(m.path.count("/") == 1 for m in modules
                                                     if m.path.startswith("toolchain/"))}}


def markdown(r: dict) -> str:
    out = [f"# Code structure of {r['root']}", "", "## Largest parameter lists", "",
           "| function | where | parameters | **kwargs |", "|---|---|---:|---|"]
    out += [f"| {f['function']} | {f['where']} | {f['parameters']} | {'yes' if f['kwargs'] else ''} |"
            for f in r["largest_parameter_lists"]]
    out += ["", "Click commands (parameters as Click sees them):", ""]
    for name, c in r["click_commands"].items():
        out.append(f"- {name}: " + (f"generated (+{c['static']} static)" if c["generated"] else str(c["static"])))
    nested = r["in_function_imports"]
    out += ["", f"## In-function imports of project modules: {nested['total']}", ""]
    out += [f"- {path}: {n}" for path, n in nested["top_files"].items()]
    groups = sorted(RANK, key=lambda g: (RANK[g], g))
    cells = {tuple(k.split("->")): v for k, v in r["arrows"].items()}
    out += ["", "## Import arrows between groups (row imports column; * = upward)", "",
            "| from \\ to | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    for a in groups:
        row = [f"{cells[a, b]['count']}{'*' if cells[a, b]['upward'] else ''}" if (a, b) in cells else ""
               for b in groups]
        if any(row):
            out.append(f"| {a} | " + " | ".join(row) + " |")
    upward = {k: v for k, v in r["arrows"].items() if v["upward"]}
    out += ["", f"Upward arrows: {sum(v['count'] for v in upward.values())} in {len(upward)} group pairs", ""]
    out += [f"- {pair}: {v['count']} ({v['module_level']} module-level, {v['in_function']} in-function): "
            + ", ".join(f"{k} ({n})" for k, n in v["modules"].items()) for pair, v in upward.items()]
    out += ["", "## Where each setting is declared", "", "| setting | places | where |", "|---|---:|---|"]
    out += [f"| {s} | {len(places)} | {', '.join(places)} |" for s, places in r["settings"].items()]
    mods = r["modules"]
    out += ["", f"## Modules: {mods['total']} ({mods['directly_in_toolchain']} directly in toolchain/)"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="a checkout")
    parser.add_argument("--json", action="store_true", help="print the measures as JSON")
    args = parser.parse_args()
    result = measure(args.root.resolve())
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
