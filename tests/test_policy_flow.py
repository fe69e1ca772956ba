"""Policy end to end: CLI → flow → a real SCIM server. Role loss per deprovision mode, scope loss on
update, regaining the role, collisions, stable usernames and renames in place."""


import pytest
from sqlmodel import select

from helpers import event, send, write_config
from models.db import session_scope
from models.tables import Mapping, Operation

pytestmark = pytest.mark.usefixtures("prefect_harness")


def by_name(scim) -> dict:
    return {u["userName"]: u for u in scim.users()}


def options(**kw) -> str:
    """Extra keys for the helper's `app` connector."""
    return "".join(f"    {k}: {v}\n" for k, v in kw.items())


@pytest.mark.parametrize("mode", ["delete", "disable", "none"])
def test_role_removal_deprovisions_by_mode_and_regaining_it_reprovisions(tmp_path, sqlite_url, scim, mode):
    config = write_config(tmp_path, scim, extra_connector=options(roles="[sales]", deprovision=mode))
    code, out = send(tmp_path, config, event(username="alice", email="alice@example.com", roles=["sales"]))
    assert code == 0 and "create" in out, out
    first_id = by_name(scim)["alice"]["id"]

    code, out = send(tmp_path, config, event("user.roles_changed", username="alice", roles=["hr"]))
    assert code == 0 and "deprovision" in out, out
    users = by_name(scim)
    if mode == "delete":
        assert users == {}
    elif mode == "disable":
        assert users["alice"]["active"] is False and users["alice"]["id"] == first_id
    else:
        assert users["alice"]["active"] is True and users["alice"]["id"] == first_id
    with session_scope() as session:
        op = session.exec(select(Operation).where(Operation.action == "deprovision")).one()
        assert op.operation == mode and "needs one of the roles sales" in op.reason

    code, out = send(tmp_path, config, event("user.roles_changed", username="alice", roles=["hr", "sales"]))
    assert code == 0 and "provision" in out, out
    users = by_name(scim)
    assert len(users) == 1 and users["alice"]["active"] is True  # never a second account
    if mode != "delete":
        assert users["alice"]["id"] == first_id  # the disabled account is switched back on, not re-created
    with session_scope() as session:
        assert session.exec(select(Mapping)).one().remote_id == users["alice"]["id"]


def test_an_update_that_finds_the_user_out_of_scope_deprovisions(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=options(roles="[sales]", deprovision="disable"))
    assert send(tmp_path, config, event(username="bob", roles=["sales"]))[0] == 0
    code, out = send(tmp_path, config, event("user.updated", username="bob", family_name="Builder", roles=[]))
    assert code == 0 and "deprovision" in out and "disable" in out, out
    assert by_name(scim)["bob"]["active"] is False
    # Still out of scope: a later unrelated update does not switch it back on.
    code, out = send(tmp_path, config, event("user.updated", username="bob", given_name="Robert"))
    assert code == 0 and by_name(scim)["bob"]["active"] is False, out


def test_a_collision_across_user_stores_fails_naming_both_users(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=options(pattern='"{UN}"'))
    assert send(tmp_path, config, event(username="alice"))[0] == 0
    code, out = send(tmp_path, config, event(username="SEC/alice", email="alice@sec.example.com"))
    assert code == 1, out
    assert len(scim.users()) == 1 and scim.users()[0]["emails"][0]["value"] == "alice@example.com"  # not overwritten
    with session_scope() as session:
        failed = session.exec(select(Operation).where(Operation.status == "failed")).one()
    assert failed.entity_name == "alice@SEC" and failed.connector == "app"


def test_the_collision_is_recorded_with_its_code_and_both_names(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=options(pattern='"{UN}"'))
    assert send(tmp_path, config, event(username="alice"))[0] == 0
    code, out = send(tmp_path, config, event(username="SEC/alice"))
    assert code == 1 and "collision" in out and "alice@PRIMARY" in out and "alice@SEC" in out, out
    with session_scope() as session:
        failed = session.exec(select(Operation).where(Operation.status == "failed")).one()
    assert failed.error_code == "collision"
    assert "alice@PRIMARY" in failed.error_message and "alice@SEC" in failed.error_message


def test_on_collision_suffix_gives_a_stable_numeric_suffix(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=options(pattern='"{UN}"', on_collision="suffix"))
    assert send(tmp_path, config, event(username="alice"))[0] == 0
    code, out = send(tmp_path, config, event(username="SEC/alice", email="alice@sec.example.com"))
    assert code == 0 and "username=alice2" in out, out
    second_id = by_name(scim)["alice2"]["id"]
    for family in ("Smith", "Jones"):  # later updates keep the suffix and the account
        code, out = send(tmp_path, config, event("user.updated", username="SEC/alice", family_name=family))
        assert code == 0 and "username=alice2" in out, out
    users = by_name(scim)
    assert set(users) == {"alice", "alice2"} and users["alice2"]["id"] == second_id
    assert users["alice2"]["name"]["familyName"] == "Jones"
    # A third user with the same name gets the next free suffix.
    code, out = send(tmp_path, config, event(username="THIRD/alice"))
    assert code == 0 and "username=alice3" in out, out


def test_username_is_stable_and_a_pattern_change_renames_in_place(tmp_path, sqlite_url, scim):
    config = write_config(tmp_path, scim, extra_connector=options(pattern='"{UN}"'))
    assert send(tmp_path, config, event(username="Carol", email="carol@example.com"))[0] == 0
    remote_id = by_name(scim)["carol"]["id"]
    code, out = send(tmp_path, config, event("user.updated", username="Carol", email="carol.new@example.com",
                                             display_name="Carol C", attributes={"dept": "x"}))
    assert code == 0 and "username=carol " in out + " ", out
    assert set(by_name(scim)) == {"carol"}

    # Usernames are the local key, so an event cannot rename; a pattern change does, in place.
    renamed = write_config(tmp_path, scim, extra_connector=options(pattern='"{UD, UN}"', separator='"."'))
    code, out = send(tmp_path, renamed, event("user.updated", username="Carol", given_name="Caroline"))
    assert code == 0 and "username=primary.carol" in out, out
    users = by_name(scim)
    assert set(users) == {"primary.carol"} and users["primary.carol"]["id"] == remote_id
    with session_scope() as session:
        mapping = session.exec(select(Mapping)).one()
    assert (mapping.remote_id, mapping.remote_name) == (remote_id, "primary.carol")


def test_the_explanation_is_attached_to_the_run(tmp_path, sqlite_url, scim):
    from prefect.client.orchestration import get_client

    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterName)

    config = write_config(tmp_path, scim, extra_connector=options(roles="[sales]"))
    ev = event(username="ermintrude", roles=["hr"])
    assert send(tmp_path, config, ev)[0] == 0
    with get_client(sync_client=True) as client:  # the artifacts of this event's run
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=ev["id"])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    markdown = [a.data for a in artifacts if a.type == "markdown" and "ermintrude@PRIMARY" in (a.data or "")]
    assert len(markdown) == 1, artifacts
    assert "needs one of the roles sales" in markdown[0] and "| in scope | no" in markdown[0]
