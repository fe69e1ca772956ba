"""Manager references: `attributes: {manager: attributes.manager}` names the local manager; the target
gets its own reference to the manager's account (SCIM enterprise manager.value), set on the run's
second pass when the manager is created in the same run, drift fixed, a cycle named and survived."""

import pandas as pd
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import event, send, write_config
from models.config import parse_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from models.mapping import ENTERPRISE
from models.tables import Operation
from models.validation import InvalidInput
from tasks.managers import creation_order
from tasks.plan import _managers_first

pytestmark = pytest.mark.usefixtures("prefect_harness")
MANAGED = "    attributes: {manager: attributes.manager}\n"


def add_user(name: str, manager: str | None = None, store: str = "PRIMARY") -> str:
    with session_scope() as session:
        return upsert_user(session, EventUser(username=name, user_store=store, email=f"{name}@example.com",
                                              given_name=name.title(), family_name="Family",
                                              attributes={"manager": manager}), "example.com", source="api").id


def set_manager(name: str, manager: str | None) -> None:
    add_user(name, manager)


def reconcile(config, *args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), *args])
    return result.exit_code, result.output


def managers(scim) -> dict[str, str | None]:
    """userName -> the userName of the account its manager.value points at."""
    users = scim.users()
    names = {u["id"]: u["userName"] for u in users}
    return {u["userName"]: names.get(((u.get(ENTERPRISE) or {}).get("manager") or {}).get("value"))
            for u in users}


def put_manager(scim, remote_id: str, manager_id: str) -> None:
    """Change an account's manager behind our back (a PUT of the whole resource, as an admin tool does)."""
    import requests

    headers = {"Authorization": f"Bearer {scim.token}", "Content-Type": "application/scim+json"}
    doc = requests.get(f"{scim.url}/Users/{remote_id}", headers=headers, timeout=10).json()
    doc.setdefault(ENTERPRISE, {})["manager"] = {"value": manager_id}
    doc.pop("meta", None)
    answer = requests.put(f"{scim.url}/Users/{remote_id}", json=doc, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text


def test_creation_order_puts_managers_first():
    depth = creation_order(["a", "b", "c", "d"], {"a": "b", "b": "c", "d": "x"})
    assert depth == {"a": 2, "b": 1, "c": 0, "d": 0}
    rows = pd.DataFrame({"action": ["update", "create", "create", "create", "delete"],
                         "local_id": ["u", "a", "b", "c", "z"]})
    assert list(_managers_first(rows, {"a": "b", "b": "c"})["local_id"]) == ["u", "c", "z", "b", "a"]


def test_manager_is_refused_beside_its_target_and_explained():
    base = {"tenant_domain": "example.com", "connectors": [
        {"name": "app", "type": "scim2", "scim2": {"base_url": "http://127.0.0.1:1",
                                                     "auth": {"type": "bearer", "token": "env:X"}},
         "attributes": {"manager": "attributes.manager", f"{ENTERPRISE}:manager": "attributes.boss"}}]}
    with pytest.raises(InvalidInput) as caught:
        parse_config(base)
    assert f"{ENTERPRISE}:manager: manager already sets it" in str(caught.value), str(caught.value)
    del base["connectors"][0]["attributes"][f"{ENTERPRISE}:manager"]
    cfg = parse_config(base).connectors[0]
    assert cfg.attribute_map.extra_targets == (f"{ENTERPRISE}:manager",)
    assert cfg.attribute_map.explain() == [f"{ENTERPRISE}:manager (the manager's account, by manager) ← "
                                           "attributes.manager"]


def test_managers_are_set_in_one_run_and_drift_is_fixed(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=MANAGED)
    add_user("alice", "bob")  # alice is older than her manager: her create cannot carry his id
    add_user("bob", "carol")
    add_user("carol")
    code, out = reconcile(config)
    assert code == 0, out
    assert managers(scim) == {"alice": "bob", "bob": "carol", "carol": None}
    assert "nothing to do" in reconcile(config)[1]

    # Someone changes alice's manager in the target: drift, put back.
    ids = {u["userName"]: u["id"] for u in scim.users()}
    put_manager(scim, ids["alice"], ids["carol"])
    assert managers(scim)["alice"] == "carol"
    code, out = reconcile(config)
    assert code == 0 and "update 1" in out, out
    assert managers(scim)["alice"] == "bob"

    # A new manager in the store is a change like any other.
    set_manager("alice", "carol")
    assert reconcile(config)[0] == 0
    assert managers(scim)["alice"] == "carol"


def test_a_report_created_before_its_manager_gets_him_later(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=MANAGED)
    add_user("carol")
    assert send(tmp_path, config, event(username="dave", attributes={"manager": "carol"}))[0] == 0
    # The event batch holds dave only: carol has no account yet, so dave is created without one.
    assert managers(scim) == {"dave": None}
    with session_scope() as session:
        assert {o.status for o in session.exec(select(Operation))} == {"succeeded"}
    assert reconcile(config)[0] == 0  # carol is created, and dave's manager set on the second pass
    assert managers(scim) == {"dave": "carol", "carol": None}
    # The event path sets a manager that has an account at once.
    assert send(tmp_path, config, event(username="erin", attributes={"manager": "dave"}))[0] == 0
    assert managers(scim)["erin"] == "dave"


def test_a_manager_cycle_is_named_and_both_accounts_created(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=MANAGED)
    add_user("ann", "ben")
    add_user("ben", "ann")
    add_user("cid", "nobody")
    code, out = reconcile(config)
    assert code == 0, out
    assert "managers form a cycle: ann@PRIMARY, ben@PRIMARY manage each other" in out, out
    assert "the manager 'nobody' of cid@PRIMARY (attributes.manager) is no user of the store" in out, out
    assert managers(scim) == {"ann": None, "ben": None, "cid": None}
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out


def test_google_gets_the_managers_address_and_salesforce_his_id(tmp_path, sqlite_url):
    import uuid

    import yaml

    from connectors.factory import get_connector
    from models.config import load_config
    from sandbox.google import GoogleSandbox
    from sandbox.salesforce import SalesforceSandbox
    from targets import google_config, salesforce_config

    with GoogleSandbox() as google, SalesforceSandbox() as sf:
        entries = []
        for cfg in (google_config(google, name="gws"), salesforce_config(sf, name="sf")):
            entry = cfg.model_dump(mode="json", exclude_unset=True)
            entry["attributes"] = {"manager": "attributes.manager"}
            entries.append(entry)
        config = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump({"tenant_domain": "example.com", "connectors": entries,
                                          "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05}}))
        add_user("ann", "bob")
        add_user("bob")
        code, out = reconcile(config)
        assert code == 0, out

        def google_managers():
            return {u["primaryEmail"].split("@")[0]: [r["value"] for r in u.get("relations") or []
                                                      if r.get("type") == "manager"] for u in google.users()}

        def sf_managers():
            people = {u["Id"]: u["Username"].split("@")[0] for u in sf.users.values() if u.get("UserType") == "Standard"
                      and u["Username"] != sf.username}
            return {people[i]: people.get(u.get("ManagerId")) for i, u in sf.users.items() if i in people}

        bob_address = next(u["primaryEmail"] for u in google.users() if u["primaryEmail"].startswith("bob@"))
        assert google_managers() == {"ann": [bob_address], "bob": []}
        assert sf_managers() == {"ann": "bob", "bob": None}

        # The manager changed in each target behind our back: drift, put back.
        cfg = load_config(config)
        for name, target in (("gws", "relations.manager"), ("sf", "ManagerId")):
            connector = get_connector(cfg.connector(name))
            accounts = {a.user_name.split("@")[0]: a for a in connector.iter_users()}
            other = accounts["ann"].user_name if name == "gws" else accounts["ann"].id
            connector.update_user(accounts["ann"].id, {f"extra.{target}": other}, accounts["ann"])
        assert google_managers()["ann"] != [bob_address] and sf_managers()["ann"] == "ann"
        code, out = reconcile(config)
        assert code == 0 and out.count("update 1") == 2, out
        assert google_managers()["ann"] == [bob_address] and sf_managers()["ann"] == "bob"
        code, out = reconcile(config, "--dry-run")
        assert out.count("nothing to do") == 2, out
