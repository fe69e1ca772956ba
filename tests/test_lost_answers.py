"""A lost answer never makes a second account or group: the target is read before a resend.

The network in front of each sandbox serves a write (it applies) and then drops the connection
before the answer (`FaultPlan(kinds=("lost",))`). The SCIM target keys accounts on id alone, so
nothing but the engine's own look-up stands between a resend and a duplicate; Google and Salesforce
refuse a repeated username themselves, so there a duplicate shows as a create the sandbox refused.
"""

import csv
from collections import Counter

import pytest
from typer.testing import CliRunner

from connectors.base import Account, BatchOp
from connectors.factory import get_connector
from deployments.cli import app
from helpers import write_config
from models.config import RetryPolicy
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox

runner = CliRunner()
USERS = 200
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, jitter=0.1)


def lost(*paths: str) -> FaultPlan:
    """Every write to `paths` applies and its answer is lost (the resends' answers too)."""
    return FaultPlan(rate=1.0, kinds=("lost",), only_methods=("POST", "PATCH", "PUT", "DELETE"), only_paths=paths,
                     seed=7)


def write_csv(path, family: str, groups: str = "") -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["username", "user_store", "email", "given_name", "family_name", "display_name", "active",
                      "roles", "groups"])
        for i in range(USERS):
            out.writerow([f"user{i:03d}", "PRIMARY", f"user{i:03d}@example.com", f"Given{i}", family, "", "true", "",
                          groups])


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def duplicates(values) -> int:
    return sum(n - 1 for n in Counter(values).values() if n > 1)


def test_the_lossy_network_does_duplicate_a_blind_resend():
    """The proof the test network bites: the same bulk of creates sent twice makes twice the accounts."""
    from targets import scim2_config

    with ScimSandbox(unique_user_names=False, faults=lost("/Bulk")) as scim:
        connector = get_connector(scim2_config(scim))
        ops = [BatchOp("create", account=Account(user_name=f"u{i}", external_id=f"x{i}")) for i in range(5)]
        for _ in range(2):
            results = connector.apply_batch(ops)
            assert all(r.code == "outcome_unknown" for r in results), results
        assert len(scim.users()) == 10 and scim.faults.plan.injected == {"lost": 2}


@pytest.mark.usefixtures("prefect_harness")
def test_import_and_reconcile_through_lost_answers_make_no_duplicate(tmp_path, sqlite_url):
    plan = lost("/Bulk", "/Groups")
    with ScimSandbox(unique_user_names=False, faults=plan) as scim:
        config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff]\n")
        rows = tmp_path / "users.csv"
        write_csv(rows, "Before", groups="all-staff")
        cli("import", str(rows), "--config", str(config))
        cli("reconcile", "--config", str(config))
        users, groups = scim.users(), scim.groups()
        assert plan.injected["lost"] >= 3  # at least one bulk of creates, the group create, the member add
        assert len(users) == USERS
        assert duplicates(u["externalId"] for u in users) == 0 and duplicates(u["userName"] for u in users) == 0
        assert [g["displayName"] for g in groups] == ["all-staff"]  # one group, not one per lost answer
        members = [m["value"] for m in groups[0].get("members") or []]
        assert len(members) == USERS and duplicates(members) == 0
        assert set(members) == {u["id"] for u in users}

        # Updates: every bulk of PATCHes is lost too; the target is read and the values are final.
        lost_before = plan.injected["lost"]
        write_csv(rows, "After", groups="all-staff")
        cli("import", str(rows), "--config", str(config))
        cli("reconcile", "--config", str(config))
        users = scim.users()
        assert plan.injected["lost"] > lost_before
        assert len(users) == USERS and {u["name"]["familyName"] for u in users} == {"After"}
        out = cli("reconcile", "--config", str(config))
        assert "nothing to do" in out, out


def _create_rows(accounts: dict[str, Account]) -> list[dict]:
    return [{"op": "create", "action": "create", "local_id": local_id, "remote_id": None, "changes": None,
             "entity_name": a.user_name, "user_name": a.user_name, "reason": "not in the target", "decision": None}
            for local_id, a in accounts.items()]


@pytest.mark.parametrize("kind", ["google", "salesforce"])
def test_batch_creates_through_lost_answers_make_no_duplicate(kind, sqlite_url):
    """Google batch and Salesforce Collections: 200 creates whose answers are all lost, each applied once."""
    from tasks.apply import apply_rows
    import targets

    with _sandbox(kind) as sandbox:
        cfg = (targets.google_config if kind == "google" else targets.salesforce_config)(sandbox)
        connector = get_connector(cfg)
        accounts = {f"local-{i:03d}": Account(user_name=f"lost{i:03d}@example.com", external_id=f"local-{i:03d}",
                                              given_name="Lost", family_name=f"Answer{i}",
                                              email=f"lost{i:03d}@example.com") for i in range(USERS)}
        counts = apply_rows(_create_rows(accounts), accounts, cfg, connector, run_id="lost", policy=FAST)
        assert counts.failed == 0 and counts.succeeded == USERS, counts.failures[:3]
        assert sandbox.faults.plan.injected["lost"] >= 1
        assert sandbox.duplicate_creates == 0  # no create reached the target for an account it had
        ours = [a for a in connector.iter_users() if (a.external_id or "").startswith("local-")]
        assert len(ours) == USERS and duplicates(a.user_name for a in ours) == 0


def _sandbox(kind: str):
    if kind == "google":
        from sandbox.google import GoogleSandbox

        return GoogleSandbox(faults=lost("/batch"))
    from sandbox.salesforce import SalesforceSandbox

    return SalesforceSandbox(query_batch_size=500, faults=lost("/composite/sobjects"))


class SickAfterWrite(FaultPlan):
    """The first `writes` writes to `paths` are served and their answers lost; from the first of them on,
    every read fails with 503 until `healed` (a lost answer and a failed read usually share a cause)."""

    def __init__(self, *paths: str, writes: int = 1):
        super().__init__(lose_first=writes, lose_paths=paths)
        self.sick = self.healed = False

    def draw(self, method: str, path: str = "", key: str = "") -> str | None:
        kind = super().draw(method, path, key)
        if kind == "lost":
            self.sick = True
        elif self.sick and not self.healed and method == "GET":
            return self._count("5xx")
        return kind


@pytest.mark.usefixtures("prefect_harness")
def test_a_lost_answer_the_target_cannot_be_read_about_ends_outcome_unknown_and_the_next_run_links_it(
        tmp_path, sqlite_url):
    import json

    plan = SickAfterWrite("/Bulk", "/Groups", writes=2)  # the bulk of creates, then the group create
    with ScimSandbox(unique_user_names=False, faults=plan) as scim:
        # Every read fails: the quarantine (which now gates every call, reads and group writes too) is
        # held off, so the group create is sent and its answer lost as the users' were.
        config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff]\n    quarantine_after: 1000\n",
                              attempts=3)
        rows = tmp_path / "users.csv"
        write_csv(rows, "Before", groups="all-staff")
        cli("import", str(rows), "--config", str(config))
        first = runner.invoke(app, ["reconcile", "--config", str(config)])
        assert first.exit_code == 1, first.output
        assert f"outcome_unknown {USERS + 1}" in first.output, first.output  # the users and the group create
        assert plan.injected["lost"] == 2 and plan.injected["5xx"] >= 3 * (USERS + 1)  # every read failed
        users, groups = scim.users(), scim.groups()
        assert len(users) == USERS and len(groups) == 1  # each write applied once: none was resent blind
        unknown = [json.loads(line) for line in cli("runs", "--status", "outcome_unknown", "--limit", "1000",
                                                    "--json", "--config", str(config)).splitlines()]
        assert len(unknown) == USERS + 1 and {u["error_code"] for u in unknown} == {"outcome_unknown"}
        assert all("could not be read to tell" in u["error_message"] and u["attempts"] == 1 for u in unknown)

        plan.healed = True
        second = cli("reconcile", "--config", str(config))  # reads the target: links, never creates again
        users, groups = scim.users(), scim.groups()
        assert len(users) == USERS and duplicates(u["externalId"] for u in users) == 0, second
        assert duplicates(u["userName"] for u in users) == 0
        assert [g["displayName"] for g in groups] == ["all-staff"]
        assert {m["value"] for m in groups[0].get("members") or []} == {u["id"] for u in users}
        assert plan.injected["lost"] == 2  # nothing but the first two writes lost its answer
        out = cli("reconcile", "--config", str(config))
        assert "nothing to do" in out, out


@pytest.mark.usefixtures("prefect_harness")
def test_an_event_whose_create_outcome_is_unknown_fails_its_run_and_the_retry_links_the_account(tmp_path, sqlite_url):
    import asyncio

    from models.ingest import accept
    from deployments.outcomes import stored_outcomes
    from flows.provision import provision_user
    from helpers import event
    from models.config import load_config
    from models.db import session_scope
    from models.runstate import get_event

    plan = SickAfterWrite("/Bulk")
    with ScimSandbox(unique_user_names=False, faults=plan) as scim:
        config = write_config(tmp_path, scim, attempts=3)
        accepted = accept(event(username="olive"), load_config(config))
        state = asyncio.run(provision_user(event_id=accepted.event_id, config_path=str(config), return_state=True))
        assert state.is_failed() and "outcome_unknown" in state.message, state.message
        [outcome] = stored_outcomes(accepted.event_id)
        assert outcome["status"] == "outcome_unknown" and outcome["operation"] == "create"
        with session_scope() as session:
            assert get_event(session, accepted.event_id).status == "retrying"  # its lease released, to run again
        assert len(scim.users()) == 1

        plan.healed = True
        out = cli("retry", accepted.event_id, "--config", str(config))
        [outcome] = stored_outcomes(accepted.event_id)
        assert outcome["status"] == "succeeded" and outcome["operation"] == "link", out
        assert len(scim.users()) == 1 and plan.injected["lost"] == 1
