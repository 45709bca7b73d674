"""Plan modules: `modules/NAME/module.yaml` (description + a small schema of inputs) and
`modules/NAME/plan.yaml.j2` (a Jinja2 template rendering a `vms:` fragment). A plan uses one with
`use: {module: NAME, with: {...}}`; the template sees its inputs, `facts`, `hosts` (names) and the
helpers of `placement.py`.

Modules are looked up in $QVPLAN_MODULES (':'-separated), then `modules/` beside the plan or its
parent folder, then the `modules/` shipped with qvplan.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..inventory import HostEntry
from .diagnostics import Diagnostic, PlanError
from .facts import Facts
from .placement import Helpers
from .schema import Placement, PlanSpec
from .source import Located, parse_yaml, pydantic_diagnostics, render_cached

SHIPPED = Path(__file__).resolve().parents[2] / "modules"
TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "list": (list,), "int": (int,), "bool": (bool,),
                                      "map": (dict,), "number": (int, float)}


def search_path(base: Path) -> list[Path]:
    env = [Path(p) for p in os.environ.get("QVPLAN_MODULES", "").split(":") if p]
    return [*env, base / "modules", base.parent / "modules", SHIPPED]


def find_module(name: str, base: Path) -> Path | None:
    for folder in search_path(base):
        if (folder / name / "module.yaml").is_file():
            return folder / name
    return None


def check_inputs(schema: dict[str, Any], given: dict[str, Any], located: Located,
                 at: tuple[Any, ...]) -> tuple[dict[str, Any], list[Diagnostic]]:
    """`with:` against the module's `inputs:` schema: unknown, missing and wrongly typed inputs."""
    values: dict[str, Any] = {}
    problems = []
    for key in given:
        if key not in schema:
            problems.append(located.diag(f"unknown module input {key!r}",
                                         f"the module takes: {', '.join(schema) or 'nothing'}", (*at, key)))
    for key, spec in schema.items():
        spec = spec if isinstance(spec, dict) else {}
        if key not in given:
            if spec.get("required"):
                problems.append(located.diag(f"missing module input {key!r}", spec.get("description"), at))
            values[key] = spec.get("default")
            continue
        want = TYPES.get(str(spec.get("type", "string")), (object,))
        value = given[key]
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            problems.append(located.diag(f"module input {key!r} must be a {spec.get('type', 'string')}",
                                         spec.get("description"), (*at, key)))
        values[key] = value
    return values, problems


def expand_modules(spec: PlanSpec, located: Located, facts: Facts, hosts: dict[str, HostEntry],
                   variables: dict[str, Any], base: Path, problems: list[Diagnostic],
                   ) -> Iterator[tuple[str, Placement, tuple[str, int | None], tuple[str, int | None]]]:
    """Yield (vm, placement, (file, line), (file, line of after:)) for each module's placements."""
    helpers = Helpers(facts, list(hosts) or list(facts), spec.prerequisites.cpu)
    for i, use in enumerate(spec.use):
        at = ("use", i)
        folder = find_module(use.module, base)
        if folder is None:
            problems.append(located.diag(f"module {use.module!r} not found",
                                         f"looked in {', '.join(str(p) for p in search_path(base))}",
                                         (*at, "module")))
            continue
        try:
            meta = yaml.safe_load((folder / "module.yaml").read_text()) or {}
            template = (folder / "plan.yaml.j2").read_text()
        except (OSError, yaml.YAMLError) as err:
            problems.append(located.diag(f"module {use.module!r} is broken: {err}", "fix the module",
                                         (*at, "module")))
            continue
        inputs, bad = check_inputs(meta.get("inputs") or {}, use.with_, located, (*at, "with"))
        if bad:
            problems.extend(bad)
            continue
        file = str(folder / "plan.yaml.j2")
        context = {**variables, **helpers.globals(), **inputs, "inputs": inputs, "facts": facts,
                   "hosts": list(hosts)}
        try:
            frag = parse_yaml(render_cached(template, context, file), file)
        except PlanError as err:
            problems.extend(err.diagnostics)
            continue
        yield from _placements(frag, use.module, problems, (located.file, located.line_of(at)))


def _placements(frag: Located, module: str, problems: list[Diagnostic], use_loc: tuple[str, int | None]
                ) -> Iterator[tuple[str, Placement, tuple[str, int | None], tuple[str, int | None]]]:
    data = frag.data if isinstance(frag.data, dict) else {}
    extra = set(data) - {"vms"}
    if extra or not isinstance(frag.data, dict | None):
        problems.append(frag.diag(f"module {module} must render only a vms: mapping", "fix the module", ()))
        return
    try:
        vms = PlanSpec.model_validate({"vms": data.get("vms") or {}}).vms
    except ValidationError as err:

        problems.extend(pydantic_diagnostics(err, frag))
        return
    for vm, placement in vms.items():
        yield vm, placement, use_loc, use_loc  # problems point at the plan's use: entry
