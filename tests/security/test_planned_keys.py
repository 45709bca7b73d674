"""Apply's trust exchange imports only the key the plan showed: the planner records (and
`qvplan plan` prints) each key it will import, a saved plan carries it, and a host whose key
changed since is refused before anything is imported (pure logic: real plans, real keys)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from qvplan.apply.executor import KeyChanged, planned_key
from qvplan.plan import load_plan_text, make_plan
from qvplan.plan.facts import FactsDoc
from qvplan.plan.render import render_plan
from qvplan.plan.saved import load_saved, save_plan
from qvplan.pqc import HostIdentity

from ..plan.factsgen import expand

PLAN = """
hosts: {hv-a: {address: 10.0.0.1}, hv-b: {address: 10.0.0.2}}
trust: {exchange: true%s}
vms: {web-01: hv-b}
"""


def identities(tmp: Path) -> dict[str, HostIdentity]:
    return {name: HostIdentity.load_or_create(tmp / name) for name in ("hv-a", "hv-b", "impostor")}


def document(ident: HostIdentity) -> dict[str, str]:
    return {"public_key": base64.b64encode(ident.public_key).decode(), "fingerprint": ident.fingerprint}


def plan_for(ids: dict[str, HostIdentity], pinned: str = ""):
    facts = expand({"hv-a": {"trusted": [], "vms": {"web-01": {}}, "fingerprint": ids["hv-a"].fingerprint},
                    "hv-b": {"trusted": [], "fingerprint": ids["hv-b"].fingerprint}})
    plan = make_plan(load_plan_text(PLAN % pinned, "plan.yaml", {}, facts, Path(".")), facts)
    return plan, facts


def test_the_plan_shows_and_keeps_the_keys_it_will_import(tmp_path: Path) -> None:
    ids = identities(tmp_path)
    plan, facts = plan_for(ids)
    assert plan.trust_exchange == [("hv-a", "hv-b"), ("hv-b", "hv-a")] and not plan.errored
    assert plan.settings["trust_keys"] == {"hv-a": ids["hv-a"].fingerprint, "hv-b": ids["hv-b"].fingerprint}
    text = render_plan(plan)
    assert f"hv-a ← hv-b ({ids['hv-b'].fingerprint})" in text and f"hv-b ← hv-a ({ids['hv-a'].fingerprint})" in text
    saved = load_saved(save_plan(tmp_path / "plan.json", plan, FactsDoc(facts, "now")))
    assert saved.plan.settings["trust_keys"] == plan.settings["trust_keys"]
    assert planned_key(saved.plan, "hv-b", document(ids["hv-b"])) == (document(ids["hv-b"])["public_key"],
                                                                      ids["hv-b"].fingerprint)


def test_a_changed_key_is_refused_whatever_the_document_claims(tmp_path: Path) -> None:
    ids = identities(tmp_path)
    plan, _ = plan_for(ids)
    forged = {**document(ids["impostor"]), "fingerprint": ids["hv-b"].fingerprint}  # the claim is not believed
    for doc in (document(ids["impostor"]), forged, {"public_key": "not base64!"}, None):
        with pytest.raises(KeyChanged) as err:
            planned_key(plan, "hv-b", doc)
        assert err.value.code == "key-changed" and "nothing imported" in err.value.cause
        assert "plan again" in err.value.fix
    plan.settings.pop("trust_keys")  # a plan that names no key (e.g. saved by an older qvplan)
    with pytest.raises(KeyChanged, match="shows no key of hv-b"):
        planned_key(plan, "hv-b", document(ids["hv-b"]))


def test_a_pinned_key_is_the_one_planned(tmp_path: Path) -> None:
    ids = identities(tmp_path)
    plan, _ = plan_for(ids, pinned=f", pinned: {{hv-b: '{ids['hv-b'].fingerprint}'}}")
    assert plan.settings["trust_keys"]["hv-b"] == ids["hv-b"].fingerprint
    wrong, _ = plan_for(ids, pinned=f", pinned: {{hv-b: '{ids['impostor'].fingerprint}'}}")
    assert wrong.errored and not wrong.trust_exchange  # the plan itself refuses: nothing to import
