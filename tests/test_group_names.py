"""Group names across SCIM servers: a group the target holds under another case is adopted, a 409 on a
group create is followed by a look-up and adoption (when the group is ours), and a failed group
operation fails `outbound event` and `outbound reconcile`.

The server is scim2-server, configured (sandbox.scim `unique_group_names`) as SCIMMY and most
directories behave: Group displayName is caseExact=false with server uniqueness in its /Schemas,
so a second group of one name in another case is refused with 409 {"scimType": "uniqueness"}.
scim2-server enforces what its schema says; only the schema is changed, no answer is rewritten.
"""

import pytest
import requests
from sqlmodel import select
from typer.testing import CliRunner

from connectors.base import RemoteGroup, group_named, same_group_name
from deployments.cli import app
from deployments.outcomes import stored_outcomes
from helpers import event, send, write_config
from models.config import RetryPolicy, load_config
from models.db import session_scope
from models.events import EventUser
from models.identity import ensure_group, upsert_user
from models.tables import Event, Mapping, Operation
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


@pytest.fixture
def scimmy_like():
    with ScimSandbox(unique_group_names=True) as server:
        yield server


def test_group_names_compare_as_the_target_does():
    assert same_group_name("engineering", "Engineering") and same_group_name(" Eng ", "eng")
    assert not same_group_name("engineering", "Engineering", case_exact=True)
    eng, ENG = RemoteGroup("eng", "1"), RemoteGroup("ENG", "2")
    assert group_named([ENG], "eng") == ENG
    assert group_named([ENG, eng], "eng") == eng  # the exact spelling first
    assert group_named([ENG, RemoteGroup("Eng", "3")], "eng") is None  # two candidates, none exact: no guess
    assert group_named([ENG], "eng", case_exact=True) is None


def _post_group(server, name: str, members=(), external_id=None) -> dict:
    body = {"schemas": [GROUP_SCHEMA], "displayName": name, "members": [{"value": m} for m in members]}
    if external_id:
        body["externalId"] = external_id
    response = requests.post(f"{server.url}/Groups", headers={"Authorization": f"Bearer {server.token}"}, json=body)
    response.raise_for_status()
    return response.json()


def _post_user(server, name: str) -> str:
    response = requests.post(f"{server.url}/Users", headers={"Authorization": f"Bearer {server.token}"},
                             json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
    response.raise_for_status()
    return response.json()["id"]


def members(server) -> dict[str, set[str]]:
    return {g["displayName"]: {m["value"] for m in g.get("members") or []} for g in server.groups()}


def add_user(name: str, groups: list[str]) -> str:
    with session_scope() as session:
        return upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                              family_name="Family", groups=groups), "example.com", source="api").id


def reconcile(config, *args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config), "--yes", *args])
    return result.exit_code, result.output


def test_the_server_refuses_a_second_group_in_another_case(scimmy_like):
    """The premise: this server is the SCIMMY-like one (409 uniqueness), so adopting is the only way in."""
    _post_group(scimmy_like, "Engineering")
    with pytest.raises(requests.HTTPError) as refused:
        _post_group(scimmy_like, "engineering")
    assert refused.value.response.status_code == 409 and refused.value.response.json()["scimType"] == "uniqueness"


def test_reconcile_adopts_a_group_held_under_another_case_and_leaves_its_members_alone(tmp_path, sqlite_url,
                                                                                        scimmy_like):
    stranger = _post_user(scimmy_like, "stranger")  # not ours: it stays in the group
    existing = _post_group(scimmy_like, "Engineering", members=[stranger])
    config = write_config(tmp_path, scimmy_like, extra_connector="    groups: [engineering]\n")
    add_user("alice", ["engineering"])
    add_user("bob", ["engineering"])

    code, out = reconcile(config)
    assert code == 0, out
    assert "group_create" not in out and "member_add 2" in out, out
    ids = {u["userName"]: u["id"] for u in scimmy_like.users()}
    # One group, its name as the server has it, its foreign member kept, ours added.
    assert members(scimmy_like) == {"Engineering": {stranger, ids["alice"], ids["bob"]}}
    with session_scope() as session:
        link = session.exec(select(Mapping).where(Mapping.entity_type == "group")).one()
    assert link.remote_id == existing["id"]

    before = len(scimmy_like.requests)
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out
    assert [r for r in scimmy_like.requests[before:] if r[0] in MUTATING] == []


def test_an_event_adopts_the_group_and_a_second_event_reuses_it(tmp_path, sqlite_url, scimmy_like):
    stranger = _post_user(scimmy_like, "stranger")
    _post_group(scimmy_like, "Engineering", members=[stranger])
    config = write_config(tmp_path, scimmy_like, extra_connector="    groups: [engineering]\n")
    code, out = send(tmp_path, config, event(username="carol", groups=["engineering"]))
    assert code == 0, out
    assert "member_add" in out and "group=engineering" in out, out  # the group operation is shown
    code, out = send(tmp_path, config, event(username="dave", groups=["engineering"]))
    assert code == 0, out
    ids = {u["userName"]: u["id"] for u in scimmy_like.users()}
    assert members(scimmy_like) == {"Engineering": {stranger, ids["carol"], ids["dave"]}}


@pytest.mark.parametrize("exact_filters", [False, True], ids=["caseless-filter", "exact-filter"])
def test_a_409_on_a_group_create_is_followed_by_adoption_when_the_group_is_ours(tmp_path, sqlite_url, exact_filters):
    """The plan saw no group (it appeared between plan and apply): the create meets 409 and adopts it,
    also from a server whose `eq` filter compares exactly (SCIMMY's): the look-up reads the listing."""

    with ScimSandbox(unique_group_names=True, exact_filters=exact_filters) as server:
        _a_409_is_followed_by_adoption(tmp_path, server, exact_filters)


def _a_409_is_followed_by_adoption(tmp_path, scimmy_like, exact_filters: bool):
    from connectors.factory import get_connector
    from tasks.apply import apply_group_rows

    config = write_config(tmp_path, scimmy_like, extra_connector="    groups: [engineering]\n")
    cfg = load_config(config).connectors[0]
    with session_scope() as session:
        group_id = ensure_group(session, "engineering").id
    existing = _post_group(scimmy_like, "Engineering")
    filtered = requests.get(f"{scimmy_like.url}/Groups", headers={"Authorization": f"Bearer {scimmy_like.token}"},
                            params={"filter": 'displayName eq "engineering"'}).json()
    assert filtered["totalResults"] == (0 if exact_filters else 1)  # the server is the one the test says
    row = {"action": "group_create", "group": "engineering", "group_id": group_id, "group_remote_id": None,
           "local_id": None, "entity_name": "engineering", "remote_id": None,
           "reason": "configured group engineering is missing from the target"}
    counts = apply_group_rows([row], cfg, get_connector(cfg), run_id="t", policy=RetryPolicy(attempts=1))
    assert (counts.succeeded, counts.failed) == (1, 0), counts.failures
    with session_scope() as session:
        op = session.exec(select(Operation).where(Operation.entity_type == "group")).one()
        link = session.exec(select(Mapping).where(Mapping.entity_type == "group")).one()
    assert op.status == "succeeded" and "already has it as Engineering: adopted" in op.reason
    assert link.remote_id == existing["id"] and len(scimmy_like.groups()) == 1

    # A group that carries another system's externalId is not ours: the create fails, saying why.
    with session_scope() as session:
        other_id = ensure_group(session, "ops").id
    _post_group(scimmy_like, "OPS", external_id="someone-else")
    counts = apply_group_rows([{**row, "group": "ops", "group_id": other_id, "entity_name": "ops"}], cfg,
                              get_connector(cfg), run_id="t", policy=RetryPolicy(attempts=1))
    assert counts.failed == 1
    assert "not adopted: it carries another externalId (someone-else)" in counts.failures[0]["error"]


def test_a_failed_group_operation_fails_the_event_and_names_it(tmp_path, sqlite_url, scimmy_like):
    # Engineering belongs to another system (its externalId): it cannot be adopted, nor made again.
    _post_group(scimmy_like, "Engineering", external_id="someone-else")
    config = write_config(tmp_path, scimmy_like, extra_connector="    groups: [engineering, admins]\n")
    ev = event(username="erin", groups=["engineering"])
    code, out = send(tmp_path, config, ev)
    assert code == 1, out
    lines = [line.split()[2:4] + [line] for line in out.splitlines() if line.startswith("app ")]
    assert [(op, status) for op, status, _ in lines] == [
        ("create", "succeeded"), ("group_create", "failed"), ("member_add", "failed"), ("group_create", "succeeded")]
    assert "group=engineering" in lines[1][2] and "not adopted: it carries another externalId" in lines[1][2], out
    # The status API reads the same outcomes; the event is failed (a refusal: no retry would help).
    assert [(o["operation"], o["status"], o["remote_name"]) for o in stored_outcomes(ev["id"])] == [
        ("create", "succeeded", "erin"), ("group_create", "failed", "engineering"),
        ("member_add", "failed", "engineering"), ("group_create", "succeeded", "admins")]
    with session_scope() as session:
        stored = session.get(Event, ev["id"])
    assert stored.status == "failed" and "group_create engineering" in stored.error, stored.error
    # The run is Failed, naming the user and the group; its artifact row for erin says so too.
    run = _run_of(ev["id"])
    assert run.state_type.value == "FAILED" and "erin@PRIMARY" in run.state.message, run.state.message
    assert "group_create engineering" in run.state.message, run.state.message
    [row] = _artifact_rows(run.id, "outbound-app-operations")
    assert row["status"] == "failed" and row["error"].startswith("group_create engineering: already_exists"), row

    # A group none of the event's users is in fails the event too: the event asked for it to exist.
    ev = event(username="frank", groups=[])
    with session_scope() as session:  # admins was made by erin's event; make engineering's create the only one
        assert session.exec(select(Mapping).where(Mapping.remote_name == "admins")).one()
    code, out = send(tmp_path, config, ev)
    assert code == 1 and "group_create" in out and "member_add" not in out, out


def _run_of(event_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=event_id)))
        return run


def _artifact_rows(flow_run_id, key: str) -> list[dict]:
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_a_failed_group_operation_fails_reconcile(tmp_path, sqlite_url, scimmy_like):
    _post_group(scimmy_like, "Engineering", external_id="someone-else")
    config = write_config(tmp_path, scimmy_like, extra_connector="    groups: [engineering]\n")
    add_user("gina", ["engineering"])
    code, out = reconcile(config)
    assert code == 1, out
    assert "failed 2" in out, out  # the group create and the member add it needed


def test_a_case_exact_server_keeps_groups_of_other_cases_apart(tmp_path, sqlite_url):
    """A server whose /Schemas make displayName caseExact: once `outbound check` has read it,
    `engineering` is not `Engineering` and gets its own group."""
    with ScimSandbox(group_names_case_exact=True) as server:
        _post_group(server, "Engineering")
        config = write_config(tmp_path, server, extra_connector="    groups: [engineering]\n")
        result = CliRunner().invoke(app, ["check", "--config", str(config)])
        assert result.exit_code == 0 and "group names compared with case" in result.output, result.output
        add_user("hal", ["engineering"])
        code, out = reconcile(config)
        assert code == 0 and "group_create 1" in out, out
        assert sorted(g["displayName"] for g in server.groups()) == ["Engineering", "engineering"]


def test_google_groups_are_found_by_address_whatever_the_case(tmp_path, sqlite_url):
    """Google compares group addresses without case: `Engineering` made elsewhere is found for
    `engineering`, the plan adopts it, and a create refused as a duplicate adopts it too."""
    from connectors.factory import get_connector
    from sandbox.google import GoogleSandbox
    from targets import google_config
    from tasks.apply import apply_group_rows
    from tasks.plan import group_diff

    with GoogleSandbox() as sandbox:
        cfg = google_config(sandbox)
        connector = get_connector(cfg)
        existing = connector.create_group("Engineering", [])
        assert connector.find_group("engineering").id == existing.id
        assert connector.find_group("ENGINEERING@" + sandbox.domains[0]).id == existing.id
        rows = group_diff(["engineering"], {}, {}, list(connector.iter_groups()), {}, {}, {}, {},
                          connector.capabilities.group_names_case_exact)
        assert rows.empty  # adopted: nothing to create, nobody to add

        with session_scope() as session:
            group_id = ensure_group(session, "engineering").id
        row = {"action": "group_create", "group": "engineering", "group_id": group_id, "group_remote_id": None,
               "local_id": None, "entity_name": "engineering", "remote_id": None, "reason": "missing"}
        counts = apply_group_rows([row], cfg, connector, run_id="t", policy=RetryPolicy(attempts=1))
        assert (counts.succeeded, counts.failed) == (1, 0), counts.failures
        with session_scope() as session:
            assert session.exec(select(Mapping).where(Mapping.entity_type == "group")).one().remote_id == existing.id
        assert [g.id for g in connector.iter_groups()] == [existing.id]


# --- SCIMMY (npm), when installed: `npm ci --prefix tests/scimmy` ------------------------------

SCIMMY_DIR = __import__("pathlib").Path(__file__).parent / "scimmy"


class _Scimmy:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token


@pytest.fixture
def scimmy():
    """A SCIM server built on SCIMMY (tests/scimmy/server.mjs): its filter compares exactly, its
    handlers refuse a second group of one name in any case with 409 uniqueness."""
    import os
    import secrets
    import shutil
    import subprocess

    if shutil.which("node") is None or not (SCIMMY_DIR / "node_modules" / "scimmy").is_dir():
        pytest.skip("SCIMMY is not installed: npm ci --prefix tests/scimmy")
    token = secrets.token_urlsafe(16)
    process = subprocess.Popen(["node", str(SCIMMY_DIR / "server.mjs")], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "SCIMMY_TOKEN": token})
    try:
        first = process.stdout.readline()  # "listening <port>" once it accepts connections
        assert first.startswith("listening "), first
        yield _Scimmy(f"http://127.0.0.1:{int(first.split()[1])}/v2", token)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _scimmy_groups(server) -> dict[str, set[str]]:
    body = requests.get(f"{server.url}/Groups", headers={"Authorization": f"Bearer {server.token}"},
                        params={"startIndex": 1, "count": 100}).json()
    return {g["displayName"]: {m["value"] for m in g.get("members") or []} for g in body["Resources"]}


def test_scimmy_engineering_is_adopted_and_a_foreign_group_fails_the_event(tmp_path, sqlite_url, scimmy):
    stranger = _post_user(scimmy, "stranger")
    _post_group(scimmy, "Engineering", members=[stranger])
    with pytest.raises(requests.HTTPError):  # the premise: SCIMMY-built servers refuse the other case
        _post_group(scimmy, "engineering")
    config = write_config(tmp_path, scimmy, extra_connector="    groups: [engineering]\n")
    add_user("ivan", ["engineering"])
    code, out = reconcile(config)
    assert code == 0 and "group_create" not in out, out
    users = requests.get(f"{scimmy.url}/Users", headers={"Authorization": f"Bearer {scimmy.token}"},
                         params={"filter": 'userName eq "ivan"'}).json()["Resources"]
    assert _scimmy_groups(scimmy) == {"Engineering": {stranger, users[0]["id"]}}
    code, out = reconcile(config)
    assert code == 0 and "nothing to do" in out, out

    # Its filter misses "ops" for "OPS": a create refused as a duplicate still finds and adopts it.
    from connectors.factory import get_connector
    from tasks.apply import apply_group_rows

    existing = _post_group(scimmy, "OPS")
    cfg = load_config(config).connectors[0]
    with session_scope() as session:
        group_id = ensure_group(session, "ops").id
    row = {"action": "group_create", "group": "ops", "group_id": group_id, "group_remote_id": None,
           "local_id": None, "entity_name": "ops", "remote_id": None, "reason": "missing"}
    counts = apply_group_rows([row], cfg, get_connector(cfg), run_id="t", policy=RetryPolicy(attempts=1))
    assert (counts.succeeded, counts.failed) == (1, 0), counts.failures
    with session_scope() as session:
        assert session.exec(select(Mapping).where(Mapping.remote_name == "ops")).one().remote_id == existing["id"]

    # A group of another system (its externalId) is neither adopted nor made again: the event fails.
    _post_group(scimmy, "Sales", external_id="someone-else")
    config = write_config(tmp_path, scimmy, extra_connector="    groups: [sales]\n")
    code, out = send(tmp_path, config, event(username="judy", groups=["sales"]))
    assert code == 1 and "group_create" in out and "not adopted" in out, out


def test_a_failed_member_add_of_an_unchanged_account_fails_the_event(tmp_path, sqlite_url, scim):
    """The account needs nothing (a no-op), its join fails: the event is not a success."""
    from sandbox.faults import FaultPlan

    config = write_config(tmp_path, scim, attempts=2, extra_connector="    groups: [engineering]\n")
    assert send(tmp_path, config, event(username="kim", groups=[]))[0] == 0
    scim.faults.plan = FaultPlan(rate=1.0, kinds=("5xx",), only_methods=("PATCH",), only_paths=("/Groups",))
    ev = event("user.updated", username="kim", groups=["engineering"])
    code, out = send(tmp_path, config, ev)
    assert code == 1, out
    lines = [line.split()[2:4] for line in out.splitlines() if line.startswith("app ")]
    assert lines == [["noop", "succeeded"], ["member_add", "failed"]], out
    with session_scope() as session:
        stored = session.get(Event, ev["id"])
    assert stored.status == "retrying" and "member_add engineering: transient" in stored.error, stored.error
    assert members(scim) == {"engineering": set()}
