"""Plan text → data: Jinja2 rendering, then YAML with the line of every key path kept.

Line numbers are those of the rendered text; block tags (`{% if %}`) keep their own (blank) line,
so for plans whose loops don't add lines they match the file.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from .diagnostics import Diagnostic, PlanError

SCHEMA_FIX = "see `qvplan schema` for the plan format"

Path_ = tuple[Any, ...]


@dataclass
class Located:
    """Parsed data plus the (1-based) line where each key path starts."""

    data: Any
    file: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """Line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def diag(self, message: str, fix: str | None, path: Path_) -> Diagnostic:
        from .diagnostics import key_path

        return Diagnostic(message, fix, self.file, self.line_of(path), key_path(path) or None)


def jinja_env(**globals_: Any) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                               autoescape=False)
    env.globals.update(globals_)
    return env


def _template_line(name: str) -> int | None:
    """Jinja rewrites tracebacks so a template frame carries the template's own line."""
    tb = sys.exc_info()[2]
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(text: str, variables: dict[str, Any], file: str, env: SandboxedEnvironment | None = None) -> str:
    """Render `text` as a Jinja2 template; template problems become a located PlanError."""
    env = env or jinja_env()
    fix = "fix the template, or pass the variable with --var NAME=VALUE or a vars: file"
    try:
        return _render(env, text, variables, file)
    except jinja2.TemplateSyntaxError as err:
        raise PlanError([Diagnostic(f"template syntax error: {err.message}", fix, file, err.lineno)]) from None
    except jinja2.UndefinedError as err:
        raise PlanError([Diagnostic(f"template error: {err.message}", fix, file, _template_line(file))]) \
            from None
    except jinja2.TemplateError as err:
        raise PlanError([Diagnostic(f"template error: {err.message or err}", fix, file,
                                    _template_line(file))]) from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as err:
        raise PlanError([Diagnostic(f"template error: {err}", fix, file, _template_line(file))]) from None


def _render(env: SandboxedEnvironment, text: str, variables: dict[str, Any], file: str) -> str:
    if env is _SHARED:
        return _compiled(text, file).render(**variables)
    code = env.compile(text, name=file, filename=file)
    return env.template_class.from_code(env, code, env.make_globals(None)).render(**variables)


_SHARED = jinja_env()


@functools.lru_cache(maxsize=64)
def _compiled(text: str, file: str) -> jinja2.Template:
    """Module templates are rendered once per use: compile each text once per process."""
    code = _SHARED.compile(text, name=file, filename=file)
    return _SHARED.template_class.from_code(_SHARED, code, _SHARED.make_globals(None))


def render_cached(text: str, variables: dict[str, Any], file: str) -> str:
    """`render` with the compiled template kept (helpers come in `variables`, not env globals)."""
    return render(text, variables, file, _SHARED)


# libyaml when present: plans, modules and fuzzing parse several times faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _key(node: yaml.Node) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else repr(node.value)[:40]


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str, problems: list[Diagnostic]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _key(key_node)
            if key == "<<":  # merge key: its content is attributed to the mapping itself
                continue
            if key in seen:
                problems.append(Diagnostic(f"duplicate key {key!r}", "keep one of them", file,
                                           key_node.start_mark.line + 1, ".".join(map(str, (*path, key)))))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, file, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, file, problems)


def parse_yaml(text: str, file: str) -> Located:
    """YAML → data plus line map. Syntax errors and duplicate keys become a located PlanError."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise PlanError([Diagnostic(f"YAML error: {err.problem or err.context}", "fix the YAML syntax",
                                    file, line)]) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as err:
        raise PlanError([Diagnostic(f"YAML error: {err}", "fix the YAML syntax", file)]) from None
    lines: dict[Path_, int] = {}
    problems: list[Diagnostic] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, file, problems)
    if problems:
        raise PlanError(problems)
    # Keys are looked up by their text: pydantic reports loc keys as strings.
    return Located(data, file, {tuple(str(p) if not isinstance(p, int) else p for p in k): v
                                for k, v in lines.items()})


def pydantic_diagnostics(err: ValidationError, located: Located, prefix: tuple[Any, ...] = ()) -> list[Diagnostic]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p != "[key]")
        path = (*prefix, *loc)
        kind, msg = e["type"], e["msg"]
        if kind == "extra_forbidden":
            msg, fix = f"unknown key {loc[-1]!r}", f"check its spelling; {SCHEMA_FIX}"
        elif kind == "missing":
            msg, fix = f"missing required key {loc[-1]!r}", SCHEMA_FIX
            path = path[:-1]
        elif kind == "value_error" and " — " in msg:
            msg, fix = msg.removeprefix("Value error, ").split(" — ", 1)
        else:
            msg, fix = msg.removeprefix("Value error, "), SCHEMA_FIX
        if "[key]" in e["loc"]:
            msg = f"invalid name {loc[-1]!r}: {msg}"
        out.append(located.diag(msg, fix, path))
    return out
