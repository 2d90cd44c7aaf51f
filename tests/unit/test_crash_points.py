"""Every named crash point of the daemon is driven by some test, so that a new one without a
kill (or in-process crash) test fails here.

A crash point is a call of `syncd.testing_hooks.step` under `syncd/`, named by a string
literal (`step("push.after_http")`) or by a module-level constant (`step(STEP_AFTER_MARK)`).
A test drives it when a file under `tests/` names it: its string in quotes, or its constant.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import syncd

SYNCD = Path(syncd.__file__).resolve().parent
TESTS = Path(__file__).resolve().parents[1]
HOOKS_MODULE = "syncd.testing_hooks"


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """One `step(...)` call: where it is, and its name (None when it cannot be read)."""

    where: str
    name: str | None
    constant: str | None = None


def _crash_points(path: Path) -> list[CrashPoint]:
    """The `testing_hooks.step` calls of one module, however the hook was imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    step_names: set[str] = set()  # from syncd.testing_hooks import step [as x]
    module_names: set[str] = set()  # from syncd import testing_hooks [as y]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == HOOKS_MODULE:
            step_names |= {a.asname or a.name for a in node.names if a.name == "step"}
        elif isinstance(node, ast.ImportFrom) and node.module == "syncd":
            module_names |= {a.asname or a.name for a in node.names if a.name == "testing_hooks"}
    constants: dict[str, str] = {}
    for statement in tree.body:
        target, value = None, None
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign):
            target, value = statement.target, statement.value
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            constants[target.id] = value.value
    points = []
    relative = path.relative_to(SYNCD.parent).as_posix()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_hook = (isinstance(func, ast.Name) and func.id in step_names) or (
            isinstance(func, ast.Attribute)
            and func.attr == "step"
            and isinstance(func.value, ast.Name)
            and func.value.id in module_names
        )
        if not is_hook:
            continue
        where = f"{relative}:{node.lineno}"
        arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            points.append(CrashPoint(where, arg.value))
        elif isinstance(arg, ast.Name) and arg.id in constants:
            points.append(CrashPoint(where, constants[arg.id], arg.id))
        else:
            points.append(CrashPoint(where, None))
    return points


def crash_points() -> list[CrashPoint]:
    """Every crash point under `syncd/`."""
    return [point for path in sorted(SYNCD.rglob("*.py")) for point in _crash_points(path)]


def _test_sources() -> str:
    this = Path(__file__).resolve()
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this
    )


def _driven(point: CrashPoint, sources: str) -> bool:
    assert point.name is not None
    if re.search(rf"[\"']{re.escape(point.name)}(:\d+)?[\"']", sources):
        return True
    return point.constant is not None and re.search(rf"\b{point.constant}\b", sources) is not None


def test_the_collector_finds_crash_points_of_every_form() -> None:
    """Literal names, constants and `testing_hooks.step` calls are all collected (so the
    check below cannot pass by finding nothing)."""
    names = {point.name for point in crash_points()}
    assert "push.after_http" in names  # step("...") after `from syncd.testing_hooks import step`
    assert "messages.after_mark_sending" in names  # step(STEP_AFTER_MARK)
    assert "poller.after_page" in names  # testing_hooks.step(STEP_AFTER_PAGE)
    assert "housekeeping.chunk_committed" in names


def test_every_crash_point_has_a_readable_name() -> None:
    """Each step() call names its point by a literal or a module-level string constant, so
    that the check below can look for it."""
    unreadable = [point.where for point in crash_points() if point.name is None]
    assert unreadable == []


def test_every_crash_point_is_driven_by_a_test() -> None:
    """Each crash point's name (or its constant) appears in some test: a new crash point
    needs a test that kills or crashes the daemon there."""
    sources = _test_sources()
    undriven = [
        f"{point.where} {point.name}"
        for point in crash_points()
        if point.name is not None and not _driven(point, sources)
    ]
    assert undriven == []
