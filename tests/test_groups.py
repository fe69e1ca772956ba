"""Groups: a connector's `groups` are pushed to the SCIM sandbox and the
user's membership follows the local state: join, leave, lose scope, deletion."""


import pytest
from sqlmodel import select

from helpers import event, send, write_config
from models.db import session_scope
from models.tables import Group, Mapping, Operation

pytestmark = pytest.mark.usefixtures("prefect_harness")


def members(scim) -> dict[str, set[str]]:
    return {g["displayName"]: {m["value"] for m in g.get("members") or []} for g in scim.groups()}


def user_id(scim, name: str) -> str:
    return next(u["id"] for u in scim.users() if u["userName"] == name)


def test_groups_follow_joins_and_leaves_and_deletion(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff, admins]\n")
    code, out = send(tmp_path, config, event(username="alice", groups=["all-staff", "chess-club"]))
    assert code == 0, out
    alice = user_id(scim, "alice")
    # Both configured groups exist; only the one alice is in holds her; unconfigured groups are not pushed.
    assert members(scim) == {"all-staff": {alice}, "admins": set()}
    with session_scope() as session:
        local = {g.name: g.id for g in session.exec(select(Group))}
        mapped = {m.remote_name: m for m in session.exec(select(Mapping).where(Mapping.entity_type == "group"))}
        ops = session.exec(select(Operation).where(Operation.entity_type == "group")).all()
    assert set(mapped) == {"all-staff", "admins"} and mapped["all-staff"].local_id == local["all-staff"]
    assert sorted((o.operation, o.remote_name) for o in ops) == [
        ("group_create", "admins"), ("group_create", "all-staff"), ("member_add", "all-staff")]
    assert {o.status for o in ops} == {"succeeded"}

    assert send(tmp_path, config, event(username="bob", groups=["all-staff", "admins"]))[0] == 0
    bob = user_id(scim, "bob")
    assert members(scim) == {"all-staff": {alice, bob}, "admins": {bob}}  # the groups were reused, not duplicated

    # alice leaves all-staff and joins admins.
    code, out = send(tmp_path, config, event("user.updated", username="alice", groups=["admins"]))
    assert code == 0, out
    assert members(scim) == {"all-staff": {bob}, "admins": {alice, bob}}

    # An update that says nothing about groups changes no membership.
    assert send(tmp_path, config, event("user.updated", username="alice", family_name="X"))[0] == 0
    assert members(scim) == {"all-staff": {bob}, "admins": {alice, bob}}

    # bob is deleted: removed from every group (the SCIM connector deletes the account too).
    code, out = send(tmp_path, config, event("user.deleted", username="bob"))
    assert code == 0 and "delete" in out, out
    assert members(scim) == {"all-staff": set(), "admins": {alice}}


def test_losing_scope_removes_membership_and_regaining_restores_it(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff]\n    roles: [staff]\n"
                                                          "    deprovision: disable\n")
    assert send(tmp_path, config, event(username="carol", roles=["staff"], groups=["all-staff"]))[0] == 0
    carol = user_id(scim, "carol")
    assert members(scim) == {"all-staff": {carol}}
    assert send(tmp_path, config, event("user.roles_changed", username="carol", roles=[]))[0] == 0
    assert members(scim) == {"all-staff": set()}  # a disabled account does not stay in the group
    assert send(tmp_path, config, event("user.roles_changed", username="carol", roles=["staff"]))[0] == 0
    assert members(scim) == {"all-staff": {carol}}


def test_a_group_already_in_the_target_is_adopted(tmp_path, sqlite_url, scim):
    import requests

    requests.post(f"{scim.url}/Groups", headers={"Authorization": f"Bearer {scim.token}"},
                  json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "all-staff"}).raise_for_status()
    config = write_config(tmp_path, scim, extra_connector="    groups: [all-staff]\n")
    assert send(tmp_path, config, event(username="dave", groups=["all-staff"]))[0] == 0
    assert len(scim.groups()) == 1 and members(scim) == {"all-staff": {user_id(scim, "dave")}}
    with session_scope() as session:
        op = session.exec(select(Operation).where(Operation.entity_type == "group")).one()  # no group_create
        mapping = session.exec(select(Mapping).where(Mapping.entity_type == "group")).one()
    assert op.operation == "member_add" and mapping.remote_id == scim.groups()[0]["id"]
