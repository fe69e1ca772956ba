"""One engine: an event and a reconciliation decide alike, against a real SCIM server.

The regression tests pin the divergences the two old engines had (matching, collisions); the
stateful property test drives random event sequences through the event path and then asks the
reconciliation whether anything is left to do.
"""

import asyncio
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from prefect import flow
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlmodel import select

from connectors.base import Account
from connectors.factory import get_connector
from models.ingest import accept
from helpers import event
from models.config import load_config
from models.db import session_scope
from models.tables import Mapping
from sandbox.scim import ScimSandbox
from tasks.plan import make_plan

pytestmark = pytest.mark.usefixtures("prefect_harness")
CHANGES = ("create", "update", "link", "relink", "disable", "enable", "delete")


def config_for(tmp_path, servers: dict, extra: dict[str, str]) -> "object":
    """A configuration with one SCIM connector per server; `extra` adds policy lines per connector."""
    blocks = []
    for name, server in servers.items():
        env = f"ONE_ENGINE_TOKEN_{uuid.uuid4().hex[:8]}"
        os.environ[env] = server.token
        blocks.append(f"""  - name: {name}
    type: scim2
{extra.get(name, '')}
    scim2:
      base_url: {server.url}
      auth: {{type: bearer, token: env:{env}}}
""")
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("tenant_domain: example.com\n"
                    "retry: {attempts: 2, base_delay: 0.01, max_delay: 0.05, jitter: 0.1}\n"
                    "identity_providers: [{name: partner-idp, jit_provisioning: true, connectors: "
                    f"[{', '.join(n for n in servers if n == 'sales')}]}}]\n"
                    "connectors:\n" + "".join(blocks))
    return path


def drain(config_path) -> None:
    from flows.provision import provision_user

    asyncio.run(provision_user(config_path=str(config_path), return_state=True))


def send(config_path, ev: dict) -> None:
    accept(ev, load_config(config_path))
    drain(config_path)


def plan_changes(config_path, connector: str) -> list[tuple]:
    """What a full reconciliation of `connector` would change now (action, user)."""
    config = load_config(config_path)
    cfg = config.connector(connector)
    with session_scope() as session:
        plan = make_plan(config, cfg, get_connector(cfg), session)
    rows = plan.rows[plan.rows["action"].isin(CHANGES)]
    return sorted(zip(rows["action"], rows["entity_name"])) + [("conflict", n) for n, _ in plan.conflicts.values()]


@pytest.mark.parametrize("match, accounts", [(None, 2), ("[external_id, user_name, email]", 1)])
def test_an_account_matching_only_by_email_is_linked_by_both_paths_or_by_neither(tmp_path, sqlite_url, match,
                                                                                  accounts):
    with ScimSandbox() as scim:
        config = config_for(tmp_path, {"app": scim}, {"app": f"    match: {match}"} if match else {})
        get_connector(load_config(config).connector("app")).create_user(
            Account(user_name="a.smith", email="alice@example.com"))
        send(config, event(username="alice"))
        assert len(scim.users()) == accounts  # email adopts only when asked to
        assert plan_changes(config, "app") == []  # and reconcile agrees either way


def test_suffixed_collisions_are_the_same_names_for_events_and_reconcile(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = config_for(tmp_path, {"app": scim}, {"app": "    on_collision: suffix"})
        send(config, event(username="alice", user_store="PRIMARY"))
        send(config, event(username="alice", user_store="SECONDARY"))
        assert sorted(u["userName"] for u in scim.users()) == ["alice", "alice2"]
        assert plan_changes(config, "app") == []
        with session_scope() as session:  # the older user keeps the plain name
            names = {m.remote_name for m in session.exec(select(Mapping))}
        assert names == {"alice", "alice2"}


def test_a_conflict_never_adopts_an_account_linked_to_another_user(tmp_path, sqlite_url):
    with ScimSandbox() as scim:
        config = config_for(tmp_path, {"app": scim}, {})
        send(config, event(username="bob"))
        # Someone renames bob's account behind our back to the name carol will want.
        cfg = load_config(config).connector("app")
        connector = get_connector(cfg)
        bob = connector.find_user(user_name="bob")
        connector.update_user(bob.id, {"user_name": "carol", "external_id": None}, bob)
        ev = event(username="carol")
        send(config, ev)
        with session_scope() as session:
            owners = {m.remote_id: m.local_id for m in session.exec(select(Mapping))}
        assert len(set(owners.values())) == len(owners)  # no account linked to two users


# --- the property: both doors agree -------------------------------------------------------

NAMES = ("ann", "bob", "cy")
STORES = ("PRIMARY", "SECONDARY")


class BothDoorsAgree(RuleBasedStateMachine):
    """Random events through the event path; afterwards a reconciliation has nothing left to do."""

    tmp = None  # set by the test

    @initialize()
    def start(self):
        # Each example starts from an empty store and empty targets.
        os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{self.tmp}/state-{uuid.uuid4().hex[:8]}.db"
        self.servers = {"app": ScimSandbox().start(), "sales": ScimSandbox().start()}
        self.config = config_for(self.tmp, self.servers, {
            "app": "    on_collision: suffix\n    match: [external_id, user_name, email]",
            "sales": "    roles: [sales]\n    deprovision: disable"})
        self.known: set[tuple[str, str]] = set()

    def teardown(self):
        for server in getattr(self, "servers", {}).values():
            server.stop()

    def _send(self, type_, name, store, **user):
        send(self.config, event(type_, username=name, user_store=store, **user))

    @rule(name=st.sampled_from(NAMES), store=st.sampled_from(STORES), sales=st.booleans())
    def created(self, name, store, sales):
        self.known.add((name, store))
        self._send("user.created", name, store, email=f"{name}@example.com", given_name=name.title(),
                   family_name="Test", roles=["sales"] if sales else [])

    @rule(name=st.sampled_from(NAMES), store=st.sampled_from(STORES), given=st.sampled_from(("Ann", "Zed")))
    def updated(self, name, store, given):
        if (name, store) in self.known:
            self._send("user.updated", name, store, given_name=given)

    @rule(name=st.sampled_from(NAMES), store=st.sampled_from(STORES), roles=st.sampled_from(([], ["sales"])))
    def roles_changed(self, name, store, roles):
        if (name, store) in self.known:
            self._send("user.roles_changed", name, store, roles=roles)

    @rule(name=st.sampled_from(NAMES), store=st.sampled_from(STORES),
          kind=st.sampled_from(("user.disabled", "user.enabled", "user.deleted")))
    def lifecycle(self, name, store, kind):
        if (name, store) in self.known:
            self._send(kind, name, store)

    @rule(name=st.sampled_from(NAMES))
    def federated_login(self, name):
        self.known.add((name, "PRIMARY"))
        send(self.config, {**event("user.federated_login", username=name, trigger="federated_login",
                                   email=f"{name}.fed@example.com"), "idp": "partner-idp"})

    @rule(name=st.sampled_from(NAMES), by=st.sampled_from(("user_name", "email")))
    def account_already_there(self, name, by):
        """An account made in the target by hand, matching a future user by username or email."""
        connector = get_connector(load_config(self.config).connector("app"))
        account = Account(user_name=name, email=f"{name}@example.com") if by == "user_name" else \
            Account(user_name=f"{name}.hand", email=f"{name}@example.com")
        try:
            connector.create_user(account)
        except Exception:  # the name is taken already: nothing made
            pass

    @invariant()
    def reconcile_has_nothing_to_do(self):
        if not hasattr(self, "config"):
            return
        for connector in self.servers:
            assert [c for c in plan_changes(self.config, connector) if c[0] != "conflict"] == [], connector

    @rule()
    def reconcile_then_events_are_quiet(self):
        """After a reconciliation, the event path for every user sends no mutating request."""
        from flows.reconcile import reconcile_connector

        for name in self.servers:
            asyncio.run(reconcile_connector(connector=name, config_path=str(self.config), yes=True))
        before = {n: len(s.requests) for n, s in self.servers.items()}
        rerun_every_user(str(self.config))
        for n, s in self.servers.items():
            assert [r for r in s.requests[before[n]:] if r[0] != "GET"] == [], n


@flow(name="rerun-every-user")
def rerun_every_user(config_path: str) -> None:
    """The event path's batch over every user of the store, as if each had sent an event."""
    from flows.provision import run_batch
    from models.outbox import Batch
    from models.tables import User

    with session_scope() as session:
        users = session.exec(select(User.id, User.username, User.user_store)).all()
    batch = Batch("test", events={u: [] for u, _, _ in users}, names={u: f"{n}@{s}" for u, n, s in users})
    run_batch(batch, load_config(config_path))


def test_both_doors_agree(tmp_path, sqlite_url):
    BothDoorsAgree.tmp = tmp_path
    BothDoorsAgree.TestCase.settings = settings(max_examples=6, stateful_step_count=6, deadline=None,
                                                suppress_health_check=list(HealthCheck))
    BothDoorsAgree.TestCase().runTest()
