"""Optimistic create: a first-run user's account is created without a look-up first, where that is safe.

Against a real scim2-server: a burst of new users costs the uniqueness probe and the /Bulk, no
listing or look-up; a pre-existing account of the same userName is adopted (409 uniqueness, then
the adoption rules), not duplicated; a server that does not enforce uniqueness, a connector matching
by email, and a user run before are all looked up first, as by default. A create whose answer was
lost is read back, never resent blind.
"""

import asyncio

import pytest
from sqlmodel import select

from connectors.base import Account
from connectors.factory import clear_cache, get_connector
from helpers import event
from models.config import load_config
from models.db import session_scope
from models.tables import Event, Mapping, Operation, OperationAttempt
from sandbox.scim import ScimSandbox
from tasks.optimistic import creates_first

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _config(tmp_path, scim, create="optimistic", match=None, attempts=3):
    import os
    import uuid

    env = f"OPT_SCIM_{uuid.uuid4().hex[:6]}"
    os.environ[env] = scim.token
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f"""tenant_domain: example.com
retry: {{attempts: {attempts}, base_delay: 0.01, max_delay: 0.05, jitter: 0.1}}
connectors:
  - name: app
    type: scim2
    {f"match: {match}" if match else ""}
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
      create: {create}
""")
    clear_cache()
    return path


def _drain(config, names):
    from flows.provision import provision_user
    from models.ingest import accept

    cfg = load_config(config)
    ids = [accept(event(username=n), cfg).event_id for n in names]
    state = asyncio.run(provision_user(config_path=str(config), return_state=True))
    return state, ids


def _user_reads(scim, since: int) -> list[tuple[str, str]]:
    """GETs of /Users (look-ups and listing pages) the engine sent after request `since`."""
    return [(m, p) for m, p in scim.requests[since:] if m == "GET" and p.startswith("/v2/Users")]


def _statuses(ids):
    with session_scope() as session:
        return {e.status for e in session.exec(select(Event).where(Event.id.in_(ids))).all()}


def test_a_burst_of_new_users_is_created_without_a_look_up(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = _config(tmp_path, scim)
        names = [f"fresh{i:03d}" for i in range(30)]
        state, ids = _drain(config, names)
        assert state.is_completed(), state.message
        assert _user_reads(scim, 0) == []  # no listing, no look-up: the create was the look-up
        posts = [p for m, p in scim.requests if m == "POST"]
        # the probe: two creates of one throwaway name (the second refused), then its delete
        assert posts.count("/v2/Users") == 2 and posts.count("/v2/Bulk") == 1
        assert sorted(u["userName"] for u in scim.users()) == names  # the probe account is gone
        assert _statuses(ids) == {"succeeded"}
        with session_scope() as session:
            ops = session.exec(select(Operation).where(Operation.action == "provision")).all()
            assert {o.operation for o in ops} == {"create"} and len(ops) == 30
            assert len(session.exec(select(OperationAttempt)).all()) == 30  # every attempt recorded
            assert len(session.exec(select(Mapping)).all()) == 30

        # a second batch: the probe is not repeated, and a user run before is looked up
        before = len(scim.requests)
        state, _ = _drain(config, ["fresh900"])
        assert state.is_completed()
        assert [(m, p) for m, p in scim.requests[before:] if m != "GET"] == [("POST", "/v2/Bulk")]


def test_a_pre_existing_account_is_adopted_not_duplicated(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = _config(tmp_path, scim)
        connector = get_connector(load_config(config).connector("app"))
        existing = connector.create_user(Account(user_name="olga", given_name="Old", family_name="Name",
                                                 email="olga@example.com"))
        state, ids = _drain(config, ["olga", "newbie"])
        assert state.is_completed(), state.message
        users = scim.users()
        assert sorted(u["userName"] for u in users) == ["newbie", "olga"]  # one account each
        with session_scope() as session:
            link = session.exec(select(Mapping).where(Mapping.remote_name == "olga")).one()
            assert link.remote_id == existing.id  # the account that was there is the one linked
            ops = {(o.entity_name, o.operation, o.status) for o in session.exec(select(Operation)).all()}
            assert ("olga@PRIMARY", "link", "succeeded") in ops and ("newbie@PRIMARY", "create", "succeeded") in ops
            link_op = session.exec(select(Operation).where(Operation.entity_name == "olga@PRIMARY",
                                                           Operation.operation == "link")).one()
            # the refused create's attempt is recorded, under the link it became
            assert len(session.exec(select(OperationAttempt).where(OperationAttempt.operation_id == link_op.id)).all()) == 1
        assert _statuses(ids) == {"succeeded"}
        # the read-back fixed what the adopted account held: its name is the user's now
        olga = next(u for u in scim.users() if u["userName"] == "olga")
        assert olga["name"]["givenName"] == "Olga" and olga.get("externalId")


def test_a_server_that_takes_a_repeated_username_is_looked_up_first(tmp_path, sqlite_url):
    with ScimSandbox(unique_user_names=False) as scim:
        config = _config(tmp_path, scim)
        connector = get_connector(load_config(config).connector("app"))
        existing = connector.create_user(Account(user_name="petra", given_name="Petra", family_name="Liddell",
                                                 email="petra@example.com"))
        assert creates_first(load_config(config).connector("app"), connector) is False
        assert sorted(u["userName"] for u in scim.users()) == ["petra"]  # the probe's two accounts deleted
        state, ids = _drain(config, ["petra", "quinn"])
        assert state.is_completed(), state.message
        assert sorted(u["userName"] for u in scim.users()) == ["petra", "quinn"]  # adopted by the look-up
        with session_scope() as session:
            assert session.exec(select(Mapping).where(Mapping.remote_name == "petra")).one().remote_id == existing.id


def test_matching_by_email_never_creates_first(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = _config(tmp_path, scim, match="[external_id, user_name, email]")
        cfg = load_config(config).connector("app")
        connector = get_connector(cfg)
        before = len(scim.requests)
        assert creates_first(cfg, connector) is False
        assert scim.requests[before:] == []  # not even probed
        existing = connector.create_user(Account(user_name="someone-else", email="rita@example.com",
                                                 given_name="R", family_name="L"))
        state, _ = _drain(config, ["rita"])
        assert state.is_completed(), state.message
        assert [u["id"] for u in scim.users()] == [existing.id]  # adopted by its email (and renamed), not doubled
        assert _user_reads(scim, before)


def test_the_default_looks_up_first(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = _config(tmp_path, scim, create="lookup")
        state, _ = _drain(config, ["sam"])
        assert state.is_completed()
        assert _user_reads(scim, 0) and [p for m, p in scim.requests if m == "POST"] == ["/v2/Bulk"]


def test_a_user_run_before_is_looked_up(tmp_path, sqlite_url):
    """An event that ran before (retried, or cut short) may have written under a name the user no longer has."""
    from models.outbox import claim, release
    from models.ingest import accept

    with ScimSandbox() as scim:
        config = _config(tmp_path, scim)
        cfg = load_config(config)
        accept(event(username="tess"), cfg)
        again = accept(event(username="ugo"), cfg).event_id
        cut_short = accept(event(username="yusuf"), cfg).event_id  # a drain died running it
        accept(event(username="vera"), cfg)  # two events of one user, both on their first run
        accept(event("user.updated", username="vera"), cfg)
        with session_scope() as session:
            retried = session.get(Event, again)
            retried.attempts = 1
            session.add(retried)
            running = session.get(Event, cut_short)
            running.status = "running"
            session.add(running)
        batch = claim(10)
        assert len(batch) == 4
        assert {batch.names[u] for u in batch.first_run} == {"tess@PRIMARY", "vera@PRIMARY"}
        release(batch)


def test_a_lost_create_answer_is_read_back_not_resent(tmp_path, sqlite_url):
    with ScimSandbox(drop_bulk_answers=1) as scim:
        config = _config(tmp_path, scim)
        state, ids = _drain(config, ["wendy", "xavier"])
        assert state.is_completed(), state.message
        assert sorted(u["userName"] for u in scim.users()) == ["wendy", "xavier"]  # not created twice
        assert [p for m, p in scim.requests if m == "POST"].count("/v2/Bulk") == 1  # never resent
        assert _statuses(ids) == {"succeeded"}
