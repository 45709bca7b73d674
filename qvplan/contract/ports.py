"""The spec's ports, defined once."""

MIGRATION_PORT = 9410  # the PQC migration listener
API_PORT = 9400  # the agent's local HTTP API
API_LISTEN = f"127.0.0.1:{API_PORT}"
MIGRATION_LISTEN = f"0.0.0.0:{MIGRATION_PORT}"
CONTROL_SOCKET = "/run/quantavirt/api.sock"  # the control API (root and the quantavirt group)
CONTROL_GROUP = "quantavirt"
