"""Mutation testing (issue 17): cosmic-ray's operators, one mutant at a time, judged by pytest.

For each module in mutation/config.toml every cosmic-ray mutant is generated, written into a
scratch copy of the tree (mutation/.work/tree, made fresh for each run) and judged by that
module's suite. The real source tree is never written; the copy's file is restored after every
mutant, also on Ctrl-C. Writes mutation/RESULTS.json and mutation/RESULTS.md.

    python mutation/run.py                          # every module of the config
    python mutation/run.py --module rlm_core/audit.py
    python mutation/run.py --module rlm_core/audit.py --list   # show the mutants, run nothing
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cosmic_ray.ast import ast_nodes, get_ast_from_path
from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator, operator_names

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
ANNOTATION_REASON = (
    "mutates a type annotation; the module has `from __future__ import annotations`, "
    "so annotations are never evaluated"
)


@dataclass(frozen=True)
class ModuleConfig:
    """One module to mutate and the suite that judges its mutants."""

    path: str
    suite: list[str]
    args: list[str]
    select: str
    sample: int | None
    note: str
    then: list[str] = dataclasses.field(default_factory=list)
    then_args: list[str] = dataclasses.field(default_factory=list)


Span = tuple[int, int, str]


@dataclass(frozen=True)
class Mutant:
    """One mutation of one module, with what it changes."""

    id: str
    operator: str
    occurrence: int
    line: int
    function: str
    scope: tuple[int, int] | None
    before: str
    after: str
    annotation: bool

    def key(self, module: str) -> tuple[str, str, str, str, str]:
        """What names a mutant across unrelated edits (no line numbers, no occurrence index)."""
        return (module, self.function, self.operator, self.before, self.after)

    def order(self) -> str:
        """A stable pseudo-random rank, for deterministic samples."""
        return hashlib.sha256("|".join(self.key("")).encode()).hexdigest()


def git(*args: str) -> str:
    """A git command's output in the real tree."""
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def load_config() -> tuple[list[str], int, list[ModuleConfig]]:
    """pytest arguments and modules from mutation/config.toml."""
    raw = tomllib.loads((HERE / "config.toml").read_text(encoding="utf-8"))
    modules = [
        ModuleConfig(
            path=m["path"],
            suite=list(m["suite"]),
            args=list(m.get("args", [])),
            select=m.get("select", "all"),
            sample=m.get("sample"),
            note=m.get("note", ""),
            then=list(m.get("then", [])),
            then_args=list(m.get("then_args", [])),
        )
        for m in raw["module"]
    ]
    return list(raw["pytest_args"]), int(raw.get("jobs", 1)), modules


def load_equivalents() -> dict[tuple[str, ...], str]:
    """Mutants judged equivalent by a person, each with its reason."""
    raw = tomllib.loads((HERE / "equivalent.toml").read_text(encoding="utf-8"))
    return {
        (e["module"], e["function"], e["operator"], e["before"], e["after"]): e["reason"]
        for e in raw.get("equivalent", [])
    }


_copied_from: dict[str, str] = {}


def make_trees(jobs: int) -> list[Path]:
    """Fresh copies of the working tree (tracked and untracked, not ignored), minus mutation/."""
    _copied_from["commit"] = git("rev-parse", "HEAD")
    trees = [WORK / f"tree-{i}" for i in range(jobs)]
    for old in WORK.glob("tree*"):
        shutil.rmtree(old)
    listed = git("ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for rel in listed:
        src = ROOT / rel
        if not rel or rel.startswith("mutation/") or not src.is_file():
            continue
        dst = trees[0] / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for tree in trees[1:]:
        shutil.copytree(trees[0], tree)
    for tree in trees:
        check_copy_is_imported(tree)
    return trees


def test_env(tree: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The copy first on sys.path (ahead of the editable install), no bytecode caches."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(HERE)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def check_copy_is_imported(tree: Path) -> None:
    """Refuse to run when the tests would import the real tree instead of the copy."""
    out = subprocess.run(
        [sys.executable, "-c", "import rlm_core; print(rlm_core.__file__)"],
        cwd=tree,
        env=test_env(tree),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"tests would import {out}, not the scratch copy; refusing to run")


# --- mutants ---------------------------------------------------------------------------------


def _spans(source: str) -> tuple[list[Span], list[Span], list[tuple[int, int]]]:
    """Named definitions (decorators included), function bodies, and annotation extents."""
    tree = ast.parse(source)
    named: list[Span] = []
    bodies: list[Span] = []
    annotations: list[tuple[int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                named.append((first, end, name))
                if not isinstance(child, ast.ClassDef):
                    bodies.append((child.lineno, end, name))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    for node in ast.walk(tree):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        annotations += [
            (_pos(a.lineno, a.col_offset), _pos(a.end_lineno or a.lineno, a.end_col_offset or 0))
            for a in found
            if a is not None
        ]
    return named, bodies, annotations


def _pos(line: int, col: int) -> int:
    return line * 100_000 + col


def _has_future_annotations(source: str) -> bool:
    return any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in ast.parse(source).body
    )


def _changed(original: str, mutated: str) -> tuple[str, str]:
    """The removed and the added lines of a mutation, stripped."""
    before, after = [], []
    for line in difflib.ndiff(original.splitlines(), mutated.splitlines()):
        if line.startswith("- ") and line[2:].strip():
            before.append(line[2:].strip())
        elif line.startswith("+ ") and line[2:].strip():
            after.append(line[2:].strip())
    return " / ".join(before), " / ".join(after)


def enumerate_mutants(path: Path) -> tuple[str, list[tuple[Mutant, str]]]:
    """The module's source and every cosmic-ray mutant of it, with its mutated source."""
    source = path.read_text(encoding="utf-8")
    named, bodies, annotations = _spans(source)
    future = _has_future_annotations(source)
    module_ast = get_ast_from_path(path)
    mutants: list[tuple[Mutant, str]] = []
    for name in operator_names():
        operator_class = get_operator(name)
        if operator_class.arguments():
            continue  # no core operator needs arguments; a plugin's would need configuring
        operator = operator_class()
        positions = [
            start
            for node in ast_nodes(module_ast)
            for start, _ in operator.mutation_positions(node)
        ]
        for occurrence, (line, col) in enumerate(positions):
            mutated = mutate_code(source, operator, occurrence)
            if mutated is None or mutated == source:
                continue
            inner = [f for f in named if f[0] <= line <= f[1]]
            around = [f for f in bodies if f[0] <= line <= f[1]]
            outer = min(around, key=lambda f: f[0]) if around else None
            body = (outer[0], outer[1]) if outer and name != "core/RemoveDecorator" else None
            before, after = _changed(source, mutated)
            at = _pos(line, col)
            mutant = Mutant(
                id=f"{name.removeprefix('core/')}#{occurrence}",
                operator=name,
                occurrence=occurrence,
                line=line,
                function=max(inner, key=lambda f: f[0])[2] if inner else "<module>",
                scope=body,
                before=before,
                after=after,
                annotation=future and any(a <= at < b for a, b in annotations),
            )
            mutants.append((mutant, mutated))
    return source, mutants


# --- running ---------------------------------------------------------------------------------

_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()


@dataclass(frozen=True)
class Baseline:
    """The suite on the unmutated copy: per test, outcome, seconds and lines of the module run."""

    tests: dict[str, dict[str, Any]]
    wall: float

    def passing(self) -> list[str]:
        return [t for t, e in self.tests.items() if e["outcome"] == "passed"]

    def failing(self) -> list[str]:
        return [t for t, e in self.tests.items() if e["outcome"] == "failed"]

    def reaching(self, scope: tuple[int, int]) -> list[str]:
        """Passing tests that ran a line of `scope`, fastest first."""
        lo, hi = scope
        hits = [t for t in self.passing() if any(lo <= n <= hi for n in self.tests[t]["lines"])]
        return sorted(hits, key=lambda t: self.tests[t]["seconds"])


@dataclass(frozen=True)
class Stage:
    """One suite that judges a module's mutants: its paths, full pytest arguments, baseline."""

    suite: list[str]
    pytest_args: list[str]
    baseline: Baseline


_baselines: dict[tuple[str, ...], tuple[dict[str, Any], float]] = {}


def run_baseline(
    tree: Path, path: str, suite: list[str], pytest_args: list[str], sharing: list[str]
) -> Baseline:
    """Run the suite once on the unmutated copy, recording what each test does.

    Modules judged by the same suite (`sharing`) share one run, traced in all of them at once.
    """
    key = (*suite, "--", *pytest_args)
    if key not in _baselines:
        _baselines[key] = _probe(tree, suite, pytest_args, sharing)
    raw, wall = _baselines[key]
    tests = {t: {**e, "lines": e["lines"].get(path, [])} for t, e in raw.items()}
    return Baseline(tests, wall)


def stages(
    tree: Path, cfg: ModuleConfig, pytest_args: list[str], modules: list[ModuleConfig]
) -> list[Stage]:
    """The module's suite, then (if configured) the suite that judges what it leaves alive."""
    first_args = [*pytest_args, *cfg.args]
    sharing = [m.path for m in modules if (m.suite, m.args) == (cfg.suite, cfg.args)]
    found = [
        Stage(cfg.suite, first_args, run_baseline(tree, cfg.path, cfg.suite, first_args, sharing))
    ]
    if cfg.then:
        then_args = [*pytest_args, *cfg.then_args]
        sharing = [m.path for m in modules if (m.then, m.then_args) == (cfg.then, cfg.then_args)]
        baseline = run_baseline(tree, cfg.path, cfg.then, then_args, sharing)
        found.append(Stage(cfg.then, then_args, baseline))
    return found


def _probe(
    tree: Path, suite: list[str], pytest_args: list[str], paths: list[str]
) -> tuple[dict[str, Any], float]:
    out = WORK / "baseline.json"
    out.unlink(missing_ok=True)
    targets = {str((tree / p).resolve()): p for p in paths}
    env = test_env(
        tree, {"MUTATION_PROBE_TARGETS": os.pathsep.join(targets), "MUTATION_PROBE_OUT": str(out)}
    )
    args = [a for a in pytest_args if a not in ("-x", "--exitfirst")]
    print(f"baseline run of {' '.join(suite)[:100]}... tracing {', '.join(paths)}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-p", "mutation_probe", *suite],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1) or not out.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"baseline of {suite} could not run (pytest exit {proc.returncode})")
    raw = json.loads(out.read_text(encoding="utf-8"))
    for entry in raw.values():
        entry["lines"] = {targets[f]: ls for f, ls in entry["lines"].items() if f in targets}
    return raw, wall


def run_pytest(
    tree: Path,
    tests: list[str],
    pytest_args: list[str],
    timeout: float,
    only: list[str] | None,
    log: Path,
) -> tuple[str, float]:
    """Run pytest on a copy: "passed", "failed", "error" or "timeout", and seconds taken.

    `only`: node ids to keep, in order, out of what `tests` collects (node ids with odd
    characters cannot be given on pytest's command line).
    """
    extra: dict[str, str] = {}
    plugin: list[str] = []
    if only is not None:
        select = WORK / f"select-{tree.name}.json"
        select.write_text(json.dumps(only), encoding="utf-8")
        extra["MUTATION_SELECT"] = str(select)
        plugin = ["-p", "mutation_probe"]
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *pytest_args, *plugin, *tests],
            cwd=tree,
            env=test_env(tree, extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with _running_lock:
        _running.add(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return "timeout", time.monotonic() - started
    finally:
        _kill(proc)  # whatever the suite left running (servers it started) goes with it
        with _running_lock:
            _running.discard(proc)
    if _stopping.is_set():
        raise KeyboardInterrupt
    # Any other exit (collection error, usage error when a test file no longer imports, a
    # crash) is the mutant's doing: check_runner ran the same command on the unmutated copy.
    return {0: "passed", 1: "failed"}.get(code, "error"), time.monotonic() - started


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_all() -> None:
    """Ctrl-C: end every running suite; each worker then restores its copy."""
    _stopping.set()
    with _running_lock:
        running = list(_running)
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def judge(
    tree: Path, mutant: Mutant, mutated: str, cfg: ModuleConfig, judges: list[Stage]
) -> dict[str, Any]:
    """Apply one mutant to a copy, run its tests stage by stage until one fails, restore the
    copy (also on Ctrl-C)."""
    path = tree / cfg.path
    original = path.read_bytes()
    outcome, seconds, tests, stage = "passed", 0.0, 0, 0
    try:
        path.write_text(mutated, encoding="utf-8")
        for stage, judge_stage in enumerate(judges, 1):
            log = WORK / "logs" / cfg.path.replace("/", "_") / f"{mutant.id}.{stage}.log"
            outcome, took, chosen = _run_stage(tree, mutant, cfg, judge_stage, log)
            seconds, tests = seconds + took, tests + chosen
            if outcome != "passed":
                break
    finally:
        path.write_bytes(original)
    return {
        **asdict(mutant),
        "status": "survived" if outcome == "passed" else "killed",
        "how": outcome,
        "stage": stage,
        "tests": tests,
        "seconds": round(seconds, 1),
    }


def _run_stage(
    tree: Path, mutant: Mutant, cfg: ModuleConfig, stage: Stage, log: Path
) -> tuple[str, float, int]:
    baseline = stage.baseline
    everything = baseline.passing()
    chosen = everything
    if cfg.select == "functions" and mutant.scope is not None:
        chosen = baseline.reaching(mutant.scope) or everything
    budget = sum(baseline.tests[t]["seconds"] for t in chosen)
    overhead = max(0.0, baseline.wall - sum(baseline.tests[t]["seconds"] for t in everything))
    timeout = 60 + 3 * budget + 2 * overhead
    only = chosen if chosen is not everything else None
    tests = [*stage.suite, *deselect(baseline)]
    outcome, seconds = run_pytest(tree, tests, stage.pytest_args, timeout, only, log)
    return outcome, seconds, len(chosen)


def check_runner(tree: Path, cfg: ModuleConfig, stage: Stage) -> None:
    """The way mutants are run passes on the unmutated copy (else every mutant looks killed)."""
    baseline = stage.baseline
    passing = baseline.passing()
    if not passing:
        raise SystemExit("no test passes on the unmutated code")
    fastest = min(passing, key=lambda t: baseline.tests[t]["seconds"])
    log = WORK / "logs" / cfg.path.replace("/", "_") / "unmutated.log"
    timeout = 120 + baseline.wall
    outcome, _ = run_pytest(tree, stage.suite, stage.pytest_args, timeout, [fastest], log)
    if outcome != "passed":
        raise SystemExit(f"{fastest} does not pass when run as mutants are ({outcome}): {log}")


def deselect(baseline: Baseline) -> list[str]:
    """pytest arguments leaving out tests that fail on the unmutated code."""
    return [arg for t in baseline.failing() for arg in ("--deselect", t)]


def run_module(
    trees: list[Path],
    cfg: ModuleConfig,
    pytest_args: list[str],
    equivalents: dict[tuple[str, ...], str],
    modules: list[ModuleConfig],
) -> dict[str, Any]:
    """Every mutant of one module (or a deterministic sample), judged; one results row."""
    started = time.monotonic()
    source, mutants = enumerate_mutants(trees[0] / cfg.path)
    static = [m for m, _ in mutants if m.annotation]
    runnable = [(m, code) for m, code in mutants if not m.annotation]
    population = len(runnable)
    if cfg.sample is not None and cfg.sample < population:
        runnable = sorted(runnable, key=lambda mc: mc[0].order())[: cfg.sample]
        runnable.sort(key=lambda mc: (mc[0].line, mc[0].id))
    shutil.rmtree(WORK / "logs" / cfg.path.replace("/", "_"), ignore_errors=True)
    judges = stages(trees[0], cfg, pytest_args, modules)
    for n, stage in enumerate(judges, 1):
        print(
            f"{cfg.path}: {len(mutants)} mutants, {len(static)} in annotations, running "
            f"{len(runnable)} on {len(trees)} copies; stage {n} baseline "
            f"{stage.baseline.wall:.0f}s, {len(stage.baseline.passing())} passing, "
            f"{len(stage.baseline.failing())} failing (left out)",
            flush=True,
        )
        check_runner(trees[0], cfg, stage)
    free: queue.Queue[Path] = queue.Queue()
    for tree in trees:
        free.put(tree)

    def work(mutant: Mutant, code: str) -> dict[str, Any]:
        tree = free.get()
        try:
            if _stopping.is_set():
                raise KeyboardInterrupt
            return judge(tree, mutant, code, cfg, judges)
        finally:
            free.put(tree)

    results = []
    with ThreadPoolExecutor(max_workers=len(trees)) as pool:
        futures = [pool.submit(work, m, code) for m, code in runnable]
        try:
            for i, future in enumerate(as_completed(futures), 1):
                result = future.result()
                reason = equivalents.get(Mutant(**_fields(result)).key(cfg.path))
                if reason is not None:
                    result["reason"] = reason
                    killed = result["status"] == "killed"
                    result["status"] = "killed" if killed else "equivalent"
                    result["listed_equivalent_but_killed"] = killed
                results.append(result)
                print(
                    f"  [{i}/{len(runnable)}] {result['status']:<10} {result['id']} line "
                    f"{result['line']} ({result['how']} at stage {result['stage']}, "
                    f"{result['tests']} tests, {result['seconds']}s)",
                    flush=True,
                )
        except BaseException:
            stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    results += [
        {**asdict(m), "status": "equivalent", "how": "static", "reason": ANNOTATION_REASON}
        for m in static
    ]
    for tree in trees:
        if (tree / cfg.path).read_text(encoding="utf-8") != source:
            raise SystemExit(f"scratch copy {tree / cfg.path} was not restored")
    seen = {m.key(cfg.path) for m, _ in mutants}
    stale = [" | ".join(k[1:]) for k in equivalents if k[0] == cfg.path and k not in seen]
    wall = time.monotonic() - started
    return summarize(cfg, source, results, population, judges, wall, stale)


def _fields(result: dict[str, Any]) -> dict[str, Any]:
    names = Mutant.__dataclass_fields__
    return {k: tuple(v) if k == "scope" and v else v for k, v in result.items() if k in names}


def summarize(
    cfg: ModuleConfig,
    source: str,
    results: list[dict[str, Any]],
    population: int,
    judges: list[Stage],
    wall: float,
    stale: list[str],
) -> dict[str, Any]:
    """One row of RESULTS.json."""
    baseline = judges[0].baseline
    then = judges[1:]
    count = {
        s: sum(r["status"] == s for r in results) for s in ("killed", "survived", "equivalent")
    }
    judged = count["killed"] + count["survived"]
    commit = _copied_from["commit"]
    at_commit = subprocess.run(
        ["git", "show", f"{commit}:{cfg.path}"], cwd=ROOT, check=False, capture_output=True
    ).stdout
    return {
        "module": cfg.path,
        "commit": commit,
        "source_matches_commit": at_commit == source.encode(),
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        **count,
        "score": round(count["killed"] / judged, 4) if judged else None,
        "mutants": population + sum(r["how"] == "static" for r in results),
        "sampled": cfg.sample is not None and cfg.sample < population,
        "sample_size": min(cfg.sample, population) if cfg.sample is not None else population,
        "runnable_population": population,
        "suite": " ".join(cfg.suite),
        "selection": cfg.select,
        "then": " ".join(then[0].suite) if then else "",
        "then_args": " ".join(cfg.then_args),
        "killed_by_then": sum(r["status"] == "killed" and r.get("stage", 1) > 1 for r in results),
        "left_out_failing_on_unmutated_code": [t for j in judges for t in j.baseline.failing()],
        "baseline_seconds": round(baseline.wall, 1),
        "then_baseline_seconds": round(then[0].baseline.wall, 1) if then else None,
        "wall_seconds": round(wall, 1),
        "timeouts": sum(r["how"] == "timeout" for r in results),
        "killed_by": {
            how: sum(r["status"] == "killed" and r["how"] == how for r in results)
            for how in ("failed", "error", "timeout")
        },
        "stale_equivalents": stale,
        "note": cfg.note,
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mutants_detail": sorted(results, key=lambda r: (r["line"], r["id"])),
    }


# --- reports ---------------------------------------------------------------------------------


def write_results(rows: list[dict[str, Any]], command: str, wall: float) -> None:
    """Merge rows into RESULTS.json (rows of modules not run are kept) and rewrite RESULTS.md."""
    path = HERE / "RESULTS.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"modules": []}
    ran = {r["module"] for r in rows}
    kept = [r for r in old["modules"] if r["module"] not in ran]
    order = [m.path for m in load_config()[2]]
    merged = sorted(
        kept + rows, key=lambda r: order.index(r["module"]) if r["module"] in order else 99
    )
    doc = {
        "commit": _copied_from["commit"],
        "tool": f"cosmic-ray {version('cosmic-ray')} operators, driven by mutation/run.py",
        "command": command,
        "last_run_wall_seconds": round(wall, 1),
        "score": "killed / (killed + survived); equivalent mutants are left out",
        "modules": merged,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (HERE / "RESULTS.md").write_text(render_markdown(doc), encoding="utf-8")


def render_markdown(doc: dict[str, Any]) -> str:
    """The readable report: the table, every survivor, every equivalent with its reason."""
    out = [
        "# Mutation testing results",
        "",
        f"Last written by `{doc['command']}` (`make mutation` runs every module; a run of some",
        f"modules replaces only their rows). Tool: {doc['tool']}.",
        f"Latest run on commit `{doc['commit']}`; each row names the commit its copy of the tree",
        "was taken at and whether the mutated source equalled that commit (others' uncommitted",
        "work is copied too).",
        "Score = killed / (killed + survived). Goal: >= 95% per module.",
        "",
        f"Wall time of that run: {doc['last_run_wall_seconds'] / 60:.1f} min "
        "(the budget for `make mutation` is 30 min on this 2-core machine).",
        "",
        "| module | score | killed | survived | equivalent | mutants run | suite | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["modules"]:
        score = "n/a" if r["score"] is None else f"{100 * r['score']:.1f}%"
        ran = (
            f"{r['sample_size']} of {r['runnable_population']}"
            if r["sampled"]
            else str(r["sample_size"])
        )
        out.append(
            f"| `{r['module']}` | {score} | {r['killed']} | {r['survived']} | {r['equivalent']} "
            f"| {ran} | {_short(r['suite'])} | {r['wall_seconds']:.0f}s |"
        )
    for r in doc["modules"]:
        out += ["", f"## `{r['module']}`"]
        clean = "equals it" if r["source_matches_commit"] else "has uncommitted edits"
        out += [
            "",
            f"Commit `{r['commit'][:12]}` (the mutated source {clean}; sha256 "
            f"`{r['source_sha256'][:12]}`),"
            f" run {r['ran_at']}, {r['wall_seconds']:.0f}s; baseline suite {r['baseline_seconds']}s;"
            f" test selection: {r['selection']}.",
            "",
            f"Suite: `{r['suite']}`.",
        ]
        if r.get("then"):
            out += [
                "",
                f"Mutants it leaves alive are then judged by `{r['then']}` "
                f"(`{r['then_args']}`; baseline {r['then_baseline_seconds']}s), which killed "
                f"{r['killed_by_then']} more.",
            ]
        if r["sampled"]:
            out += [
                "",
                f"**Sampled**: {r['sample_size']} of {r['runnable_population']} runnable mutants, "
                "a deterministic sample (ordered by a hash of each mutant's function, operator and "
                "changed text); the score is the sample's.",
            ]
        kb = r.get("killed_by", {"failed": "?", "error": "?", "timeout": "?"})
        out += [
            "",
            f"Killed by a failing test: {kb['failed']}; by an error (the mutant breaks import or "
            f"collection): {kb['error']}; by a timeout: {kb['timeout']}.",
        ]
        if r["note"]:
            out += ["", r["note"]]
        if r.get("stale_equivalents"):
            out += [
                "",
                "Entries of equivalent.toml that match no mutant any more (remove them):",
                "",
            ]
            out += [f"- {k}" for k in r["stale_equivalents"]]
        if r["left_out_failing_on_unmutated_code"]:
            out += ["", "Tests left out because they fail on the unmutated code:", ""]
            out += [f"- `{t}`" for t in r["left_out_failing_on_unmutated_code"]]
        detail = r["mutants_detail"]
        survivors = [m for m in detail if m["status"] == "survived"]
        out += ["", f"### Surviving mutants ({len(survivors)})", ""]
        out += [_line(m) for m in survivors] or ["None."]
        wrong = [m for m in detail if m.get("listed_equivalent_but_killed")]
        if wrong:
            out += ["", "Listed as equivalent but killed (remove from equivalent.toml):", ""]
            out += [_line(m) for m in wrong]
        equivalent = [m for m in detail if m["status"] == "equivalent"]
        out += ["", f"### Equivalent mutants ({len(equivalent)})", ""]
        out += [f"{_line(m)} Reason: {m['reason']}" for m in equivalent] or ["None."]
    return "\n".join(out) + "\n"


def _short(suite: str) -> str:
    tests = suite.split()
    if len(suite) <= 100:
        return f"`{suite}`"
    return f"{len(tests)} paths or test ids (listed below)"


def _line(m: dict[str, Any]) -> str:
    return (
        f"- `{m['id']}` line {m['line']} in `{m['function']}`: `{m['before']}` -> `{m['after']}`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="a module path from config.toml")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--jobs", type=int, help="mutants judged at once (default: config)")
    parser.add_argument("--no-sample", action="store_true", help="every mutant, ignore `sample`")
    parser.add_argument("--render", action="store_true", help="rewrite RESULTS.md, run nothing")
    args = parser.parse_args()
    if args.render:
        doc = json.loads((HERE / "RESULTS.json").read_text(encoding="utf-8"))
        (HERE / "RESULTS.md").write_text(render_markdown(doc), encoding="utf-8")
        return
    pytest_args, jobs, modules = load_config()
    if args.no_sample:
        modules = [dataclasses.replace(m, sample=None) for m in modules]
    jobs = max(1, args.jobs or jobs)
    if args.module:
        unknown = set(args.module) - {m.path for m in modules}
        if unknown:
            raise SystemExit(f"not in mutation/config.toml: {sorted(unknown)}")
        modules = [m for m in modules if m.path in args.module]
    if args.list:
        for cfg in modules:
            for m, _ in enumerate_mutants(ROOT / cfg.path)[1]:
                tag = " [annotation]" if m.annotation else ""
                print(f"{cfg.path} {m.id} line {m.line} {m.function}: {m.before} -> {m.after}{tag}")
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    WORK.mkdir(exist_ok=True)
    with (WORK / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another mutation run is using mutation/.work; wait for it") from None
        trees = make_trees(jobs)
        equivalents = load_equivalents()
        rows = [run_module(trees, cfg, pytest_args, equivalents, modules) for cfg in modules]
    command = "python mutation/run.py" + "".join(
        f" --module {m.path}" for m in modules if args.module
    )
    command += " --no-sample" if args.no_sample else ""
    write_results(rows, command, time.monotonic() - started)
    for r in rows:
        score = "n/a" if r["score"] is None else f"{100 * r['score']:.1f}%"
        print(
            f"{r['module']}: score {score}, killed {r['killed']}, survived {r['survived']}, "
            f"equivalent {r['equivalent']}, {r['wall_seconds']:.0f}s"
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every copy restored, RESULTS left as they were")
