"""The agent's config file as TOML text: read it, and write it (stdlib only, so cheap to import).

`host/config.py` holds the model that validates what is read here; the host CLI's quick commands
read just the one key they need (`[api] listen`) without building the model.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from ..contract.ports import API_LISTEN, CONTROL_SOCKET
from ..contract.reasons import Reason
from ..errors import QVError
from ..paths import config_path

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(QVError):
    code = Reason.BAD_REQUEST


def read(path: str | Path | None = None, *, required: bool = False) -> tuple[Path, dict[str, Any]]:
    """The config file's path and its TOML data; a missing default file is `{}` unless `required`."""
    file = config_path(path)
    if not file.exists():
        if required or path is not None:
            raise ConfigError(f"config file {file} not found", "create it or pass --config FILE")
        return file, {}
    try:
        return file, tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: not valid TOML: {err}", "fix the syntax") from None
    except OSError as err:
        raise ConfigError(f"cannot read config {file}: {err.strerror}", "check its permissions") from None


def api_listen(path: str | Path | None = None) -> str:
    """`[api] listen` of the config (the local agent's API address), without validating the rest."""
    file, data = read(path)
    api = data.get("api", {})
    listen = api.get("listen", API_LISTEN) if isinstance(api, dict) else None
    if not isinstance(listen, str):
        raise ConfigError(f"{file}: [api.listen] must be a HOST:PORT string", "fix or remove that key")
    return listen


def default_socket() -> str:
    """The control socket's default path: /run/quantavirt/api.sock for a root agent; a user's
    agent keeps it in that user's runtime directory (it cannot create /run/quantavirt)."""
    if os.geteuid() == 0:
        return CONTROL_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/quantavirt-{os.getuid()}"
    return str(Path(runtime) / "quantavirt" / "api.sock")


def api_socket(path: str | Path | None = None) -> str:
    """`[api] socket` of the config (the local agent's control socket), without validating the rest."""
    file, data = read(path)
    api = data.get("api", {})
    sock = api.get("socket", default_socket()) if isinstance(api, dict) else None
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise ConfigError(f"{file}: [api.socket] must be an absolute path", "fix or remove that key")
    return sock


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """TOML text of `{section: {key: value}}` (None values are left out)."""
    out: list[str] = []
    for name, body in sections.items():
        out.append(f"[{_key(name)}]")
        out += [f"{_key(k)} = {_value(v)}" for k, v in body.items() if v is not None]
        out.append("")
    return "\n".join(out)
