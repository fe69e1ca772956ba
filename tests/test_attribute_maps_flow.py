"""Attribute mappings end to end: a department from `attributes.dept` on a SCIM server (enterprise
extension), Google Workspace (organizations) and Salesforce (Department), kept in step by
reconciliation and by events, with the sandboxes as the targets."""

import asyncio
import uuid

import pytest
import yaml
from typer.testing import CliRunner

from connectors.factory import get_connector
from deployments.cli import app
from models.ingest import accept
from helpers import event
from models.config import load_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user
from sandbox.google import GoogleSandbox
from sandbox.salesforce import SalesforceSandbox
from sandbox.scim import ScimSandbox
from targets import google_config, salesforce_config, scim2_config

pytestmark = pytest.mark.usefixtures("prefect_harness")
DEPT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
EMPLOYEE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"
runner = CliRunner()


@pytest.fixture
def targets():
    with ScimSandbox(bulk=(True, 100, 1_048_576)) as scim, GoogleSandbox() as google, \
            SalesforceSandbox(custom_fields=("Cost_Center__c",)) as sf:
        yield scim, google, sf


def write(tmp_path, scim, google, sf):
    connectors = []
    for cfg, attributes in (
            (scim2_config(scim, name="app"), {DEPT: "attributes.dept", EMPLOYEE: "attributes.employee",
                                              "title": "attributes.title|default:Staff"}),
            (google_config(google, name="gws"), {"organizations.department": "attributes.dept",
                                                 "organizations.title": "attributes.title|default:Staff"}),
            (salesforce_config(sf, name="sf"), {"Department": "attributes.dept",
                                                "Cost_Center__c": "CC-{attributes.dept|upper}"})):
        entry = cfg.model_dump(mode="json", exclude_unset=True)
        entry["attributes"] = attributes
        connectors.append(entry)
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"tenant_domain": "example.com", "connectors": connectors,
                                    "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05, "jitter": 0.1}}))
    return path


def set_attributes(username: str, **attributes) -> None:
    with session_scope() as session:
        upsert_user(session, EventUser(username=username, attributes=attributes), "example.com", source="api")


def reconcile(config, *args) -> str:
    result = runner.invoke(app, ["reconcile", "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def departments(scim, google, sf) -> dict[str, dict[str, str]]:
    """user -> target -> the department it holds there."""
    out: dict[str, dict[str, str]] = {}
    for u in scim.users():
        out.setdefault(u["userName"], {})["app"] = (u.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
                                                    or {}).get("department")
    for u in google.users():
        orgs = u.get("organizations") or [{}]
        out.setdefault(u["primaryEmail"].split("@")[0], {})["gws"] = orgs[0].get("department")
    for u in sf.users.values():
        if u.get("UserType") == "Standard" and u["Username"] != sf.username:
            out.setdefault(u["Username"].split("@")[0], {})["sf"] = u.get("Department")
    return out


def test_a_mapped_department_reaches_every_target_and_drift_either_side_is_fixed(tmp_path, sqlite_url, targets):
    scim, google, sf = targets
    config = write(tmp_path, scim, google, sf)
    with session_scope() as session:
        for name, dept in (("ann", "R&D"), ("bob", "Sales")):
            upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                           family_name="Smith", attributes={"dept": dept, "employee": 7}),
                        "example.com", source="api")
    reconcile(config)
    want = {"ann": {"app": "R&D", "gws": "R&D", "sf": "R&D"}, "bob": {"app": "Sales", "gws": "Sales", "sf": "Sales"}}
    assert departments(scim, google, sf) == want
    ann = next(u for u in scim.users() if u["userName"] == "ann")
    assert ann["title"] == "Staff" and ann[EMPLOYEE.rsplit(":", 1)[0]]["employeeNumber"] == "7"
    assert next(u for u in sf.users.values() if u["Username"].startswith("ann@"))["Cost_Center__c"] == "CC-R&D"
    assert "nothing to do" in reconcile(config, "--dry-run")

    # A change in the store is drift on every target: a dry run shows it, a run fixes it.
    set_attributes("ann", dept="Ops")
    out = reconcile(config, "--dry-run")
    assert out.count("update 1") == 3, out
    assert departments(scim, google, sf)["ann"] == want["ann"]  # a dry run changes nothing
    reconcile(config)
    assert departments(scim, google, sf)["ann"] == {"app": "Ops", "gws": "Ops", "sf": "Ops"}
    assert next(u for u in sf.users.values() if u["Username"].startswith("ann@"))["Cost_Center__c"] == "CC-OPS"

    # A change on the target side is put back.
    cfg = load_config(config)
    for name, change in (("app", {f"extra.{DEPT}": "Hacked"}), ("gws", {"extra.organizations.department": "Hacked"}),
                         ("sf", {"extra.Department": "Hacked"})):
        connector = get_connector(cfg.connector(name))
        account = next(a for a in connector.iter_users() if a.user_name.startswith("bob"))
        connector.update_user(account.id, change, account)
    assert set(departments(scim, google, sf)["bob"].values()) == {"Hacked"}
    reconcile(config)
    assert departments(scim, google, sf)["bob"] == want["bob"]
    assert "nothing to do" in reconcile(config, "--dry-run")

    # The event path plans with the same mapping: new attributes in a user.updated reach every target.
    from flows.provision import provision_user

    accept(event("user.updated", "ann", attributes={"dept": "Legal"}), cfg)
    asyncio.run(provision_user(config_path=str(config), return_state=True))
    assert departments(scim, google, sf)["ann"] == {"app": "Legal", "gws": "Legal", "sf": "Legal"}
    assert "nothing to do" in reconcile(config, "--dry-run")
