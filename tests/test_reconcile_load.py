"""What a reconciliation asks of the Prefect API and of the SCIM schema, per chunk and per user.

Its task runs carry no tags (a tagged task run makes Prefect ask its server for tag concurrency
limits before it starts), its progress artifact still ends at 100, and a User body built as a plain
dict is the body scim2-models' User dumps, refusing what that refuses with the same error.
"""

import asyncio
import sys
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId,
                                            TaskRunFilter, TaskRunFilterFlowRunId)

from connectors.base import Account
from connectors.errors import Rejected
from connectors.scim2.mapping import _modelled_user, to_scim
from helpers import write_config
from models.config import load_config
from models.db import session_scope
from models.events import EventUser
from models.identity import upsert_user


@pytest.mark.usefixtures("prefect_harness")
def test_chunk_task_runs_carry_no_tags_and_the_progress_ends_at_100(tmp_path, sqlite_url, scim):
    from flows.reconcile import reconcile

    config = write_config(tmp_path, scim)
    with session_scope() as session:
        for i in range(5):
            upsert_user(session, EventUser(username=f"load{i}", email=f"load{i}@example.com", given_name="G",
                                           family_name="F"), "example.com", source="api")
    result = asyncio.run(reconcile("app", trigger="test", config_path=str(config), chunk_size=2))
    assert result["outcomes"]["succeeded"] == 5, result
    flow_run_id = UUID(result["flow_run_id"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))[0]
        assert {"trigger:test", "connector:app"} <= set(flow_run.tags)  # the run keeps the UI's filters
        deadline = time.monotonic() + 20
        while True:  # task runs reach the API as events
            tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
            if len([t for t in tasks if t.name.startswith("apply app rows")]) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert sorted(t.name for t in tasks if t.name.startswith("apply")) == [
            "apply app rows 1-2", "apply app rows 3-4", "apply app rows 5-5"]
        assert [t.tags for t in tasks] == [[]] * len(tasks), [(t.name, t.tags) for t in tasks]
        progress = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))) if a.type == "progress"]
        assert [a.data for a in progress] == [100.0]


def test_preload_imports_the_configured_connectors_in_the_calling_thread(tmp_path, scim, monkeypatch):
    from flows.reconcile import preload

    config = load_config(str(write_config(tmp_path, scim)))
    for name in [m for m in sys.modules if m == "connectors.scim2" or m.startswith("connectors.scim2.")]:
        monkeypatch.delitem(sys.modules, name)
    preload(config)
    assert "connectors.scim2.batch" in sys.modules and "prefect.task_engine" in sys.modules


PLAIN = [
    Account(user_name="alice", external_id="u1", given_name="Alice", family_name="Liddell", email="alice@example.com"),
    Account(user_name="", given_name="", family_name="x", display_name="", email=""),
    Account(user_name=" a ", given_name=" g ", email=" A@Example.COM ", active=False),
    Account(user_name="b", email="Bob <bob@example.com>", display_name="Bob"),
    Account(user_name="c", email="ü@bücher.de", external_id=""),
    Account(user_name="d", family_name="Only", email="d+tag@EXAMPLE.org"),
]


@pytest.mark.parametrize("account", PLAIN, ids=lambda a: repr(a.user_name))
def test_a_plain_user_body_is_the_one_scim2_models_dumps(account):
    assert to_scim(account, ()) == _modelled_user(account)
    assert list(to_scim(account, ())) == list(_modelled_user(account))  # the same keys, in the same order


@pytest.mark.parametrize("email", ["a..b@example.com", "not-an-email", "a b@example.com", "a@example.com" + "m" * 320])
def test_an_email_the_schema_refuses_is_rejected_as_the_model_rejects_it(email):
    account = Account(user_name="e", email=email)
    with pytest.raises(Rejected) as plain:
        to_scim(account, ())
    with pytest.raises(Rejected) as modelled:
        _modelled_user(account)
    assert (str(plain.value), plain.value.field) == (str(modelled.value), modelled.value.field)
    assert plain.value.field == "email"


def test_values_that_are_not_plain_still_go_through_the_model():
    with pytest.raises(Rejected) as info:
        to_scim(Account(user_name="f", display_name=5), ())
    assert info.value.field == "displayName"
    assert to_scim(Account(user_name="g", active=None), ()) == {  # the model leaves an absent value out
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "g"}


@pytest.mark.usefixtures("prefect_harness")
def test_the_next_chunk_sends_while_an_answered_one_records(tmp_path, sqlite_url, scim, monkeypatch):
    """Four chunks send at once (no max_concurrency set); a fifth starts once one of them is answered,
    not once one has also recorded: the first recorder here waits for the fifth /Bulk to be answered."""
    import threading

    import tasks.apply as apply
    from flows.reconcile import reconcile

    config = write_config(tmp_path, scim)
    with session_scope() as session:
        for i in range(10):
            upsert_user(session, EventUser(username=f"win{i}", email=f"win{i}@example.com", given_name="G",
                                           family_name="F"), "example.com", source="api")
    before = len(scim.answered)
    fifth_answered, calls, waited = threading.Event(), [], []
    record = apply.record_rows

    def watch():  # the sandbox lists each answer as it is sent
        while not fifth_answered.is_set():
            if sum(1 for a in scim.answered[before:] if a[0] == "POST" and a[1].endswith("/Bulk")) >= 5:
                fifth_answered.set()
            time.sleep(0.01)

    def first_records_late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            waited.append(fifth_answered.wait(30))
        return record(*args, **kwargs)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    monkeypatch.setattr(apply, "record_rows", first_records_late)
    try:
        result = asyncio.run(reconcile("app", trigger="test", config_path=str(config), chunk_size=2))
    finally:
        fifth_answered.set()
    assert result["outcomes"]["succeeded"] == 10, result
    assert waited == [True]  # the fifth chunk was sent while the first was still recording
