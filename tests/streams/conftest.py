"""The PQC tests' two trusting hosts and responder, for relays over real channels."""

from tests.pqc.conftest import hosts, responder  # noqa: F401 - fixtures
