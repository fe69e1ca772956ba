"""Suspend, then delete: `deprovision: {first: suspend, then: delete, after_days: 30}` switches the
account off when the user leaves scope, shows the delete as pending until it is due, then deletes
it under the deletion guard; access granted again before then re-enables and cancels the delete.
Time is moved by back-dating the recorded suspension, never by waiting."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from helpers import write_config
from models.config import parse_config
from models.db import session_scope
from models.events import EventUser
from models.identity import find_user, set_roles, upsert_user
from models.tables import Mapping, Suspension
from models.validation import InvalidInput
from tasks.staged import pending_line, staged_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")
STAGED = ("    roles: [staff]\n    deprovision: {first: suspend, then: delete, after_days: 30}\n"
          "    max_deletions: 5\n")
NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)


def test_staged_settings_are_validated_naming_the_choices():
    base = {"tenant_domain": "example.com", "connectors": [
        {"name": "app", "type": "scim2", "scim2": {"base_url": "http://127.0.0.1:1",
                                                     "auth": {"type": "bearer", "token": "env:X"}}}]}
    for value, words in (({"first": "freeze", "then": "delete", "after_days": 30}, "'suspend' or 'disable'"),
                         ({"first": "suspend", "then": "archive", "after_days": 30}, "then"),
                         ({"first": "suspend", "then": "delete"}, "after_days"),
                         ({"first": "suspend", "then": "delete", "after_days": 0}, "after_days"),
                         ("shred", "delete, disable, suspend, none, nor {first: suspend|disable")):
        base["connectors"][0]["deprovision"] = value
        with pytest.raises(InvalidInput) as caught:
            parse_config(base)
        assert "connectors[0].deprovision" in str(caught.value) and words in str(caught.value), str(caught.value)
    base["connectors"][0]["deprovision"] = {"first": "disable", "then": "delete", "after_days": 7}
    cfg = parse_config(base).connectors[0]
    assert cfg.staged.after_days == 7 and cfg.deprovision_mode == "disable"


def test_staged_rows_tell_pending_from_due():
    off = pd.DataFrame({"local_id": ["due", "waiting", "unrecorded"], "remote_id": ["r1", "r2", "r3"]})
    suspended = {"due": NOW - timedelta(days=30), "waiting": datetime(2026, 11, 20)}  # a naive time is UTC
    got = {str(action): (list(frame["local_id"]), list(reason) if not isinstance(reason, str) else reason)
           for action, _, frame, reason in staged_rows(off, suspended, 30, NOW)}
    assert got["delete"] == (["due"], ["suspended 2026-11-03, due 2026-12-03 (30 days): delete"])
    assert got["delete_pending"] == (["waiting"], ["delete pending: suspended 2026-11-20, due 2026-12-20"])
    assert got["disable"][0] == ["unrecorded"]
    assert pending_line(datetime(2026, 11, 1, tzinfo=timezone.utc), 30) == \
        "delete pending: suspended 2026-11-01, due 2026-12-01"


def add_user(name: str, roles: list[str]) -> None:
    with session_scope() as session:
        upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                       family_name="Family", roles=roles), "example.com", source="api")


def roles(name: str, held: list[str]) -> None:
    with session_scope() as session:
        set_roles(session, find_user(session, "example.com", "PRIMARY", name), held)


def backdate(name: str, days: int) -> None:
    with session_scope() as session:
        user = find_user(session, "example.com", "PRIMARY", name)
        row = session.exec(select(Suspension).where(Suspension.local_id == user.id)).one()
        row.suspended_at = row.suspended_at - timedelta(days=days)
        session.add(row)


def suspensions() -> dict[str, datetime]:
    with session_scope() as session:
        names = {u: n for u, n in session.exec(select(Mapping.local_id, Mapping.remote_name))}
        return {names.get(s.local_id, s.local_id): s.suspended_at for s in session.exec(select(Suspension))}


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def active(scim) -> dict[str, bool]:
    return {u["userName"]: u.get("active", True) for u in scim.users()}


def test_suspend_then_delete_when_due_under_the_guard(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=STAGED)
    add_user("alice", ["staff"])
    add_user("bob", ["staff"])
    assert run("reconcile", "--config", str(config))[0] == 0

    roles("alice", [])  # alice leaves scope: suspended, not deleted
    code, out = run("reconcile", "--config", str(config))
    assert code == 0 and "plan: disable 1;" in out, out
    assert active(scim) == {"alice": False, "bob": True}
    assert list(suspensions()) == ["alice"]

    # Waiting: the pending delete is in the plan (sends nothing) and in explain, with its dates.
    code, out = run("reconcile", "--config", str(config), "--dry-run", "--report", str(tmp_path / "plan.csv"))
    assert code == 0 and "plan: delete_pending 1;" in out and "deletes+disables 0" in out, out
    today = datetime.now(timezone.utc)
    line = f"delete pending: suspended {today:%Y-%m-%d}, due {today + timedelta(days=30):%Y-%m-%d}"
    assert line in (tmp_path / "plan.csv").read_text()
    code, out = run("explain", "alice", "--config", str(config))
    assert code == 0 and line in out, out
    assert run("reconcile", "--config", str(config))[0] == 0
    assert active(scim) == {"alice": False, "bob": True}

    # 30 days on, the delete is due: one delete, counted by the guard like any other.
    backdate("alice", 30)
    guarded = write_config(tmp_path, scim, extra_connector=STAGED.replace("max_deletions: 5", "max_deletions: 0"))
    code, out = run("reconcile", "--config", str(guarded))
    assert code != 0 and "plan: delete 1;" in out and "deletes+disables 1 (limit 0)" in out, out
    assert "alice" in active(scim)
    code, out = run("reconcile", "--config", str(guarded), "--yes")
    assert code == 0, out
    assert active(scim) == {"bob": True} and suspensions() == {}
    assert "nothing to do" in run("reconcile", "--config", str(config))[1]


def test_access_granted_again_before_the_due_date_cancels_the_delete(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=STAGED)
    add_user("carol", ["staff"])
    assert run("reconcile", "--config", str(config))[0] == 0
    roles("carol", [])
    assert run("reconcile", "--config", str(config))[0] == 0
    backdate("carol", 29)
    roles("carol", ["staff"])
    code, out = run("reconcile", "--config", str(config))
    assert code == 0 and "plan: enable 1;" in out, out
    assert active(scim) == {"carol": True} and suspensions() == {}
    # Leaving again starts a new 30 days: the 29 already served do not count.
    roles("carol", [])
    assert run("reconcile", "--config", str(config))[0] == 0
    code, out = run("reconcile", "--config", str(config), "--dry-run")
    assert "plan: delete_pending 1;" in out, out


def test_an_account_already_off_starts_its_clock(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=STAGED)
    add_user("dave", ["staff"])
    assert run("reconcile", "--config", str(config))[0] == 0
    with session_scope() as session:  # switched off in the store first (no suspension: still in scope)
        find_user(session, "example.com", "PRIMARY", "dave").active = False
    assert run("reconcile", "--config", str(config))[0] == 0
    assert active(scim) == {"dave": False} and suspensions() == {}
    roles("dave", [])
    code, out = run("reconcile", "--config", str(config))
    assert code == 0 and "plan: disable 1;" in out, out
    assert list(suspensions()) == ["dave"]


def test_the_event_path_suspends_and_re_enables_alike(tmp_path, sqlite_url, scim):
    from helpers import event, send

    config = write_config(tmp_path, scim, extra_connector=STAGED)
    assert send(tmp_path, config, event(username="erin", roles=["staff"]))[0] == 0
    assert send(tmp_path, config, event("user.roles_changed", username="erin", roles=[]))[0] == 0
    assert active(scim) == {"erin": False} and list(suspensions()) == ["erin"]
    backdate("erin", 5)
    assert send(tmp_path, config, event("user.roles_changed", username="erin", roles=["staff"]))[0] == 0
    assert active(scim) == {"erin": True} and suspensions() == {}


def test_google_suspends_then_deletes(tmp_path, sqlite_url):
    import uuid

    import yaml

    from sandbox.google import GoogleSandbox
    from targets import google_config

    with GoogleSandbox() as google:
        entry = google_config(google, name="gws").model_dump(mode="json", exclude_unset=True)
        entry.update(roles=["staff"], max_deletions=5, deprovision={"first": "suspend", "then": "delete", "after_days": 30})
        config = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(yaml.safe_dump({"tenant_domain": "example.com", "connectors": [entry],
                                          "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05}}))
        add_user("gail", ["staff"])
        assert run("reconcile", "--config", str(config))[0] == 0
        roles("gail", [])
        code, out = run("reconcile", "--config", str(config))
        assert code == 0 and "plan: suspend 1;" in out, out
        assert [u["suspended"] for u in google.users()] == [True]
        code, out = run("reconcile", "--config", str(config), "--dry-run")
        assert "plan: delete_pending 1;" in out, out
        backdate("gail", 31)
        code, out = run("reconcile", "--config", str(config))
        assert code == 0 and "plan: delete 1;" in out, out
        assert google.users() == [] and suspensions() == {}
