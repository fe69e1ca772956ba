"""Nested groups: a member of eng-platform, nested in engineering, counts as a member of engineering
for the role rules and for group push (behind `group_nesting`); a nesting cycle is walked once and
named in the plan, never followed forever."""

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from helpers import write_config
from models.config import parse_config
from models.db import session_scope
from models.events import EventUser
from models.groupgraph import cycles, flatten
from models.identity import upsert_user
from models.nesting import ancestry, cycle_problems, inherited, members_through, set_member_groups
from models.validation import InvalidInput

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_walk_expands_nesting_and_ends_cycles():
    nest = {"engineering": {"eng-platform"}, "eng-platform": {"eng-sre"}, "a": {"b"}, "b": {"a"}}
    up = ancestry(nest)
    assert inherited({"eng-sre"}, up) == {"eng-platform", "engineering"}
    assert inherited({"engineering"}, up) == frozenset()
    assert inherited({"a"}, up) == {"b"}
    direct = {"engineering": {"u1"}, "eng-sre": {"u3"}, "a": {"u4"}, "b": {"u5"}}
    assert members_through(["engineering", "a", "none"], direct, nest) == {"engineering": {"u1", "u3"},
                                                                          "a": {"u4", "u5"}}
    assert cycles({"a": {"b"}, "b": {"c", "x"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}) == [["a", "b", "c"], ["d"]]
    assert cycle_problems(nest) == ["nested groups form a cycle: a, b contain each other; each member is counted once"]
    assert flatten({"g": {"h", "u1"}, "h": {"g", "u2"}}, "g") == {"u1", "u2"}  # the LDAP pull's walk, the same one


def test_group_nesting_is_validated_and_a_connector_overrides_key_by_key():
    base = {"tenant_domain": "example.com", "connectors": [
        {"name": "app", "type": "scim2", "scim2": {"base_url": "http://127.0.0.1:1", "auth": {"type": "bearer",
                                                                                             "token": "env:X"}},
         "group_nesting": {"push": "direct"}}]}
    config = parse_config({**base, "group_nesting": {"rules": "direct"}})
    got = config.nesting(config.connectors[0])
    assert (got.rules, got.push) == ("direct", "direct")
    assert (config.group_nesting.rules, config.group_nesting.push) == ("direct", "flatten")
    with pytest.raises(InvalidInput) as caught:
        parse_config({**base, "group_nesting": {"push": "nested"}})
    assert "group_nesting.push" in str(caught.value) and "'flatten'" in str(caught.value) \
        and "'direct'" in str(caught.value), str(caught.value)


def add_user(name: str, groups: list[str]) -> str:
    with session_scope() as session:
        return upsert_user(session, EventUser(username=name, email=f"{name}@example.com", given_name=name.title(),
                                              family_name="Family", groups=groups), "example.com", source="api").id


def nest(group: str, members: list[str]) -> None:
    with session_scope() as session:
        set_member_groups(session, group, members)


def reconcile(config) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["reconcile", "--config", str(config)])
    return result.exit_code, result.output


def pushed(scim) -> dict[str, set[str]]:
    names = {u["id"]: u["userName"] for u in scim.users()}
    return {g["displayName"]: {names.get(m["value"], m["value"]) for m in g.get("members") or []}
            for g in scim.groups()}


def test_nested_members_count_for_role_rules_and_push(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="    roles: [engineering]\n    groups: [engineering]\n    max_deletions: 5\n")
    nest("engineering", ["eng-platform"])
    nest("eng-platform", ["eng-sre"])
    add_user("alice", ["eng-platform"])
    add_user("bob", ["engineering"])
    add_user("carol", ["eng-sre"])
    add_user("dave", ["sales"])  # in no engineering group: out of scope

    code, out = reconcile(config)
    assert code == 0, out
    assert sorted(u["userName"] for u in scim.users()) == ["alice", "bob", "carol"]
    assert pushed(scim) == {"engineering": {"alice", "bob", "carol"}}

    # carol's team leaves engineering: she loses scope (deleted, the SCIM default) and the membership.
    nest("eng-platform", [])
    code, out = reconcile(config)
    assert code == 0, out
    assert sorted(u["userName"] for u in scim.users()) == ["alice", "bob"]
    assert pushed(scim) == {"engineering": {"alice", "bob"}}
    assert "nothing to do" in reconcile(config)[1]


def test_direct_nesting_counts_only_the_groups_a_user_was_put_in(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, top="group_nesting: {push: direct}\n",
                          extra_connector="    groups: [engineering]\n")
    nest("engineering", ["eng-platform"])
    add_user("alice", ["eng-platform"])
    add_user("bob", ["engineering"])
    assert reconcile(config)[0] == 0
    assert pushed(scim) == {"engineering": {"bob"}}

    ruled = write_config(tmp_path, scim, name="ruled", top="group_nesting: {rules: direct}\n",
                         extra_connector="    roles: [engineering]\n")
    code, out = reconcile(ruled)
    assert code == 0, out
    assert "desired 1" in out.replace(",", "") or "1 desired" in out, out


def test_a_nesting_cycle_is_named_once_and_every_member_counted(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="    roles: [team-a]\n    groups: [team-a, team-b]\n")
    nest("team-a", ["team-b"])
    nest("team-b", ["team-a"])
    add_user("alice", ["team-a"])
    add_user("bob", ["team-b"])
    code, out = reconcile(config)
    assert code == 0, out
    line = "nested groups form a cycle: team-a, team-b contain each other"
    assert out.count(line) == 1, out
    assert pushed(scim) == {"team-a": {"alice", "bob"}, "team-b": {"alice", "bob"}}


def test_nest_sets_a_groups_nested_groups_from_the_command_line(tmp_path, sqlite_url, scim):
    from models.nesting import nesting

    config = write_config(tmp_path, scim)
    runner = CliRunner()
    done = runner.invoke(app, ["nest", "engineering", "eng-platform", "eng-sre", "--config", str(config)])
    assert done.exit_code == 0 and "engineering holds eng-platform, eng-sre" in done.output, done.output
    looped = runner.invoke(app, ["nest", "eng-sre", "engineering", "--config", str(config)])
    assert looped.exit_code == 0 and "problem: nested groups form a cycle: eng-sre, engineering" in looped.output
    refused = runner.invoke(app, ["nest", "eng-sre", "eng-sre", "", "--config", str(config)])
    assert refused.exit_code == 2, refused.output
    assert "'eng-sre': a group cannot be nested in itself" in refused.output and "(nothing changed)" in refused.output
    with session_scope() as session:
        assert nesting(session) == {"engineering": {"eng-platform", "eng-sre"}, "eng-sre": {"engineering"}}
    cleared = runner.invoke(app, ["nest", "eng-sre", "--config", str(config)])
    assert cleared.exit_code == 0 and "eng-sre holds no groups" in cleared.output
