"""The reason codes pqc/ spells on its own (it imports nothing of the project) are the rule book's."""

from __future__ import annotations

import inspect

from qvplan.contract.reasons import FIXES, Reason, fix_for
from qvplan.pqc import errors as pqc_errors


def test_every_pqc_error_code_is_a_reason() -> None:
    classes = [c for _, c in inspect.getmembers(pqc_errors, inspect.isclass)
               if issubclass(c, pqc_errors.PQCError)]
    assert len(classes) >= 10
    unknown = {c.__name__: c.code for c in classes if c.code not in Reason._value2member_map_}
    assert unknown == {}


def test_network_fixes_name_the_port_tried() -> None:
    assert fix_for(Reason.CONNECT_FAILED, 9499) == "check port 9499 is open, verify the network route, retry"
    assert fix_for(Reason.UNTRUSTED_HOST) == FIXES[Reason.UNTRUSTED_HOST]
    assert fix_for("no-such-code") is None
