"""Load a plan file: variables, Jinja2, YAML with lines, pydantic, inventory, modules.

Every problem found on the way is collected as a located `Diagnostic`; the loader raises one
`PlanError` holding all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import QVError
from ..gcpause import gc_paused
from ..inventory import HostEntry, read_inventory
from .diagnostics import Diagnostic, PlanError
from .facts import Facts
from .modules import expand_modules
from .schema import Placement, PlanSpec
from .source import SCHEMA_FIX, Located, parse_yaml, pydantic_diagnostics, render


@dataclass
class LoadedPlan:
    """A valid plan, with its hosts resolved (inventory + `hosts:`) and modules expanded."""

    spec: PlanSpec
    file: str
    hosts: dict[str, HostEntry]
    placements: dict[str, Placement]  # in plan order: modules first, then `vms:`
    where: dict[str, str] = field(default_factory=dict)  # vm → "file:line" of its placement
    after_where: dict[str, str] = field(default_factory=dict)  # vm → "file:line" of its after:
    variables: dict[str, Any] = field(default_factory=dict)


# -- variables --------------------------------------------------------------------------------------

def _vars_block(text: str) -> tuple[str, int] | None:
    """The raw top-level `vars:` block and its line: the `vars:` line plus indented lines after it."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("vars:"):
            j = i + 1
            while j < len(lines) and (lines[j][:1] in (" ", "\t", "#") or not lines[j].strip()):
                j += 1
            return "".join(lines[i:j]), i + 1
    return None


def plan_vars(text: str, file: str, base: Path) -> dict[str, Any]:
    """Values of the plan's own top-level `vars:` (read before rendering, so it may not use Jinja):
    a mapping of defaults, or a list of YAML files of them (relative to the plan)."""
    found = _vars_block(text)
    if not found:
        return {}
    raw, line = found
    try:
        block = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise PlanError([Diagnostic("vars: is not valid YAML", "vars: may not use Jinja; fix its YAML",
                                    file, line, "vars")]) from None
    value = block.get("vars") if isinstance(block, dict) else None
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        out: dict[str, Any] = {}
        for name in value:
            out.update(vars_file(base / name, file, line))
        return out
    raise PlanError([Diagnostic("vars: must be a mapping or a list of files", SCHEMA_FIX, file, line, "vars")])


def vars_file(path: Path, origin: str = "<cli>", line: int | None = None) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PlanError([Diagnostic(f"cannot read vars file {path}: {err.strerror}", "check the path",
                                    origin, line, "vars")]) from None
    except yaml.YAMLError:
        raise PlanError([Diagnostic(f"vars file {path} is not valid YAML", "fix its YAML", str(path))]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError([Diagnostic(f"vars file {path} must be a mapping", "write NAME: VALUE lines", str(path))])
    return {str(k): v for k, v in data.items()}


def parse_var(text: str) -> tuple[str, Any]:
    """`--var k=v`; the value is read as a YAML scalar (so `n=3` is a number)."""
    name, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise PlanError([Diagnostic(f"invalid --var {text!r}", "use --var NAME=VALUE", "<cli>")])
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return name, parsed if isinstance(parsed, str | int | float | bool) or parsed is None else value


# -- inventory --------------------------------------------------------------------------------------

def load_inventory(path: Path, located: Located) -> dict[str, HostEntry]:
    """The plan's `inventory:` file; every bad entry becomes a diagnostic."""
    try:
        entries, bad = read_inventory(path)
    except QVError as err:
        raise PlanError([located.diag(err.cause, err.fix, ("inventory",))]) from None
    if bad:
        raise PlanError([Diagnostic(f"inventory {b.key}: {b.message}", "fix the inventory", str(path)) for b in bad])
    return entries


def load_plan(path: str | Path, variables: dict[str, Any] | None = None, var_files: list[str] | None = None,
              facts: Facts | None = None) -> LoadedPlan:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError([Diagnostic(f"cannot read plan: {getattr(err, 'strerror', None) or err}",
                                    "check the path", str(p))]) from None
    merged: dict[str, Any] = {}
    for vf in var_files or []:
        merged.update(vars_file(Path(vf)))
    merged.update(variables or {})
    return load_plan_text(text, str(p), merged, facts, p.parent)


def load_plan_text(text: str, file: str = "<plan>", variables: dict[str, Any] | None = None,
                   facts: Facts | None = None, base: Path | None = None) -> LoadedPlan:
    """Text → `LoadedPlan`, or `PlanError` with every problem found."""
    with gc_paused():
        return _load_plan_text(text, file, variables, facts, base)


def _load_plan_text(text: str, file: str, variables: dict[str, Any] | None, facts: Facts | None,
                    base: Path | None) -> LoadedPlan:
    base = base or Path.cwd()
    values = {**plan_vars(text, file, base), **(variables or {})}
    located = parse_yaml(render(text, values, file), file)
    data = located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PlanError([Diagnostic("a plan must be a YAML mapping", "start with keys like hosts: and vms:",
                                    file, 1)])
    try:
        spec = PlanSpec.model_validate(data)
    except ValidationError as err:
        raise PlanError(pydantic_diagnostics(err, located)) from None

    hosts: dict[str, HostEntry] = {}
    if spec.inventory:
        inv = Path(spec.inventory)
        hosts.update(load_inventory(inv if inv.is_absolute() else base / inv, located))
    hosts.update(spec.hosts)

    problems: list[Diagnostic] = []
    placements: dict[str, Placement] = {}
    where: dict[str, str] = {}
    after_where: dict[str, str] = {}
    for vm, placement, loc, after_loc in expand_modules(spec, located, facts or {}, hosts, values, base, problems):
        if vm in placements:
            problems.append(Diagnostic(f"VM {vm} is placed by two modules (also at {where[vm]})",
                                       "place each VM once", *loc))
        placements[vm], where[vm], after_where[vm] = placement, _fmt(loc), _fmt(after_loc)
    for vm, placement in spec.vms.items():  # explicit placements override modules'
        placements.pop(vm, None)
        placements[vm] = placement
        where[vm] = _fmt((file, located.line_of(("vms", vm))))
        after_where[vm] = _fmt((file, located.line_of(("vms", vm, "after"))))
    if problems:
        raise PlanError(problems)
    return LoadedPlan(spec, file, hosts, placements, where, after_where, values)


def _fmt(loc: tuple[Any, ...]) -> str:
    file, line = loc[0], loc[1]
    return f"{file}:{line}" if line is not None else str(file)
