"""Loaded at start-up by a source agent a security test starts (PYTHONPATH): a compromised but
trusted peer. Before each send of a migration request (`migrate`, `offline-receive`) it reads
the JSON file named by QV_TEST_CRAFT and applies its edits: {"a.b.0.c": value, ...}, each a
path of keys and list indices into the request, set to the value (an empty file: no edits)."""

import json
import os

from qvplan.pqc import channel

CRAFT = os.environ.get("QV_TEST_CRAFT", "")
_real = channel.SecureChannel.send_json


def _edit(obj, dotted, value):
    *path, last = dotted.split(".")
    for key in path:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value


async def send_json(self, obj):
    if isinstance(obj, dict) and obj.get("op") in ("migrate", "offline-receive") and CRAFT:
        try:
            with open(CRAFT) as f:
                edits = json.loads(f.read() or "{}")
        except FileNotFoundError:
            edits = {}
        for dotted, value in edits.items():
            _edit(obj, dotted, value)
    return await _real(self, obj)


channel.SecureChannel.send_json = send_json
