"""The directory pull against a real OpenLDAP slapd (Debian's package, started per test with its own
slapd.conf on a free port; see sandbox/slapd.py). The service account's searches are size-limited
below the number of users, so every test that reads them all also proves the searches are paged.

Active Directory cannot run here: its specifics (objectGUID as 16 binary bytes, userAccountControl's
ACCOUNTDISABLE bit, the uSNChanged watermark against highestCommittedUSN) are tested at the
narrowest seam, the pure functions of models.directory that map an entry and choose the filter.
"""

import json
import uuid

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from models.config import parse_config
from models.db import session_scope
from models.directory import changed_filter, is_disabled, map_entry, next_watermark, roles_by_dn, watermark_problem
from models.directory_state import watermark
from models.errors import InvalidInput
from models.tables import Event
from sandbox import slapd as slapd_sandbox
from sandbox.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd
from tasks.pull import PullFailed, pull

runner = CliRunner()


def settings(url: str = "ldap://127.0.0.1:389", **changes) -> dict:
    base = {"url": url, "bind": {"dn": SERVICE_DN, "password": "env:TEST_LDAP_PASSWORD"}, "base_dn": PEOPLE,
            "group_base_dn": GROUPS, "page_size": 3, "watermark_overlap_seconds": 0}
    return {**base, **changes}


def config_of(url: str = "ldap://127.0.0.1:389", **ldap):
    return parse_config({"tenant_domain": "example.com", "sources": {"ldap": settings(url, **ldap)}})


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"url": "ldap://ldap.example.org"}, "plain ldap:// without start_tls is only accepted for loopback"),
    ({"url": "ldaps://ldap.example.org", "start_tls": True}, "ldaps:// is TLS already"),
    ({"url": "https://ldap.example.org"}, "must be an ldaps:// or ldap:// URL"),
    ({"url": "ldaps://cn=x:pw@ldap.example.org"}, "must not hold credentials"),
    ({"anchor": "distinguishedName"}, "the DN changes when an entry is renamed"),
    ({"attributes": {"mail": "email"}}, "one LDAP attribute must map to username"),
    ({"attributes": {"uid": "username", "cn": "nickname"}}, "attributes.cn: 'nickname' is not one of"),
    ({"user_filter": "objectClass=person"}, "user_filter: 'objectClass=person' is not an LDAP filter"),
    ({"bind": {"dn": SERVICE_DN, "password": "plain-text"}}, "must be a secret reference"),
])
def test_the_configuration_refuses_what_cannot_work_naming_the_field(changes, message):
    with pytest.raises(InvalidInput) as exc:
        config_of(**changes)
    assert message in str(exc.value)
    assert "plain-text" not in str(exc.value)


@pytest.mark.parametrize("changes", [{"url": "ldaps://ldap.example.org", "ca_file": "/etc/ssl/corp.pem"},
                                     {"url": "ldap://ldap.example.org", "start_tls": True},
                                     {"url": "ldap://ldap.example.org", "allow_insecure_ldap": True},
                                     {"url": "ldap://[::1]:3389"}])
def test_tls_or_loopback_or_the_explicit_override_is_accepted(changes):
    assert config_of(**changes).sources.ldap.url == changes["url"]


# --- Active Directory, at the seam (no AD here) --------------------------------------------

def ad_settings(**changes):
    return config_of(anchor="objectGUID", watermark="uSNChanged", attributes={
        "sAMAccountName": "username", "givenName": "given_name", "sn": "family_name", "mail": "email",
        "department": "attributes.department"}, **changes).sources.ldap


def test_an_ad_entry_maps_objectguid_bytes_to_the_uuid_ad_shows_and_uac_bit_2_to_disabled():
    guid = uuid.UUID("a1b2c3d4-e5f6-4789-8abc-def012345678")  # as Get-ADUser prints it
    entry = {"objectGUID": [guid.bytes_le], "sAMAccountName": [b"jdoe"], "givenName": [b"Jane"], "sn": [b"Doe"],
             "mail": [b"jdoe@corp.example"], "department": [b"Finance"], "userAccountControl": [b"514"],
             "uSNChanged": [b"40117"]}
    mapped = map_entry("CN=Jane Doe,OU=Staff,DC=corp,DC=example", entry, ad_settings())
    assert mapped.anchor == str(guid)
    assert mapped.user == {"user_store": "PRIMARY", "active": False, "username": "jdoe", "given_name": "Jane",
                           "family_name": "Doe", "email": "jdoe@corp.example", "attributes": {"department": "Finance"}}
    assert mapped.stamp == "40117"
    entry["userAccountControl"] = [b"512"]  # NORMAL_ACCOUNT
    assert map_entry("CN=Jane Doe,OU=Staff,DC=corp,DC=example", entry, ad_settings()).user["active"] is True
    entry["objectGUID"] = [b"\x01\x02"]
    problem = map_entry("CN=Jane Doe,OU=Staff,DC=corp,DC=example", entry, ad_settings())
    assert str(problem) == "CN=Jane Doe,OU=Staff,DC=corp,DC=example: objectGUID: the anchor must be 16 bytes, " \
                           "the server sent 2"


def test_the_usn_watermark_reads_above_it_and_is_invalid_above_the_servers_highest():
    assert changed_filter("(objectClass=user)", "uSNChanged", "40117") == "(&(objectClass=user)(uSNChanged>=40118))"
    assert next_watermark("uSNChanged", "40117", ["40200"], highest_usn=40250) == "40250"
    assert watermark_problem("uSNChanged", "40117", highest_usn=40250) is None
    assert "above the server's highestCommittedUSN 100" in watermark_problem("uSNChanged", "40117", highest_usn=100)
    assert "not a number" in watermark_problem("uSNChanged", "x1", highest_usn=100)
    assert "not a GeneralizedTime" in watermark_problem("modifyTimestamp", "yesterday")


def test_a_configured_attribute_disables():
    ldap = config_of(disabled={"attribute": "employeeType", "values": ["Former"]}).sources.ldap
    assert is_disabled({"employeetype": [b"former"]}, ldap) and not is_disabled({"employeetype": [b"Staff"]}, ldap)


def test_nested_groups_are_flattened_and_a_cycle_ends():
    groups = {"cn=a": {"cn=b", "uid=x"}, "cn=b": {"cn=a", "cn=c", "uid=y"}, "cn=c": {"uid=z"}}
    assert roles_by_dn(groups, {"CN=A": ["r"]}) == {"uid=x": {"r"}, "uid=y": {"r"}, "uid=z": {"r"}}
    assert roles_by_dn(groups, {"cn=c": ["s"]}) == {"uid=z": {"s"}}


# --- against slapd -------------------------------------------------------------------------

@pytest.fixture
def directory(monkeypatch):
    if not slapd_sandbox.available():
        pytest.skip("slapd is not installed (.ci/run installs it)")
    monkeypatch.setenv("TEST_LDAP_PASSWORD", SERVICE_PASSWORD)
    with Slapd(size_limit=3) as server:
        yield server


@pytest.fixture
def seeded(directory, sqlite_url):
    """alice and bob in `staff` (bob through the nested `builders`), carol locked by ppolicy; the
    groups nest in a cycle (builders ∋ staff ∋ builders), and more users than a search may return."""
    dns = {name: directory.add_person(name, name.title(), "Example") for name in ("alice", "bob", "dave", "erin")}
    dns["carol"] = directory.add_person("carol", "Carol", "Example", pwdAccountLockedTime="000001010000Z")
    builders = directory.add_group("builders", [dns["bob"]])
    staff = directory.add_group("staff", [dns["alice"], builders])
    directory.modify(builders, member=[dns["bob"], staff])
    config = config_of(directory.url, roles={staff: ["staff"], builders: ["builder"]})
    return directory, config, dns, {"staff": staff, "builders": builders}


def users() -> dict[str, tuple]:
    """username -> (active, deleted, roles, email, source) from the identity store."""
    from models.identity import load_views

    with session_scope() as session:
        return {v.username: (v.active, v.deleted, sorted(v.roles), v.email, v.source)
                for v in load_views(session, "example.com")}


def event_types() -> list[tuple[str, str]]:
    from sqlmodel import select

    with session_scope() as session:
        rows = session.exec(select(Event).order_by(Event.received_at)).all()
        return sorted((e.type, e.payload["user"]["username"]) for e in rows)


def current_watermark(config):
    with session_scope() as session:
        return watermark(session, config.sources.ldap.name)


def test_the_first_pull_is_full_paged_and_maps_nested_roles_and_the_locked_user(seeded):
    _, config, _, _ = seeded
    result = pull(config)
    assert result.full and result.why == "no watermark yet (first pull)"
    assert result.users_read == 5  # the service account may read only 3 per search: the pages add up
    both = ["builder", "staff"]
    assert users() == {"alice": (True, False, both, "alice@example.org", "directory"),
                       "bob": (True, False, both, "bob@example.org", "directory"),
                       "carol": (False, False, [], "carol@example.org", "directory"),
                       "dave": (True, False, [], "dave@example.org", "directory"),
                       "erin": (True, False, [], "erin@example.org", "directory")}
    assert {t for t, _ in event_types()} == {"user.created"}
    assert current_watermark(config).value == result.watermark
    again = pull(config)
    assert not again.full and again.events == {} and again.watermark == result.watermark


def test_an_incremental_pull_reads_only_what_changed_and_emits_each_kind_of_change(seeded):
    directory, config, dns, groups = seeded
    pull(config)
    # modifyTimestamp has a one-second grain and an incremental pull reads the watermark's own second
    # again (>=): wait for the server's clock to pass it, so the pulls below see only later changes.
    directory.wait_past(current_watermark(config).value)
    directory.modify(dns["alice"], mail="alice.l@example.org")
    assert pull(config).events["user.updated"] == 1
    directory.wait_past(current_watermark(config).value)
    directory.modify(dns["carol"], pwdAccountLockedTime=None)  # unlocked
    directory.modify(dns["dave"], pwdAccountLockedTime="000001010000Z")
    directory.modify(groups["builders"], member=[dns["erin"]])  # bob leaves; erin joins (no longer nested)
    frank = directory.add_person("frank", "Frank", "Example")
    directory.modify(groups["staff"], member=[dns["alice"], frank])
    result = pull(config)
    assert not result.full
    assert result.users_read == 4  # alice (the watermark's second), carol, dave, frank: not bob nor erin
    assert dict(result.events) == {"user.enabled": 1, "user.disabled": 1, "user.created": 1,
                                   "user.roles_changed": 3}  # alice (lost builder), bob (lost both), erin
    assert users()["alice"][2:4] == (["staff"], "alice.l@example.org")
    assert users()["bob"][2] == [] and users()["erin"][2] == ["builder"] and users()["frank"][2] == ["staff"]
    assert users()["carol"][0] is True and users()["dave"][0] is False


@pytest.mark.usefixtures("prefect_harness")
def test_a_full_pull_deletes_absent_anchors_and_the_guard_stops_a_mass_delete(seeded, tmp_path):
    directory, config, dns, _ = seeded
    pull(config)
    directory.delete(dns["erin"])
    incremental = pull(config)
    assert incremental.events == {} and users()["erin"][1] is False  # an incremental pull cannot see a delete
    result = pull(config, full=True)
    assert result.events == {"user.deleted": 1} and users()["erin"][1] is True
    for name in ("alice", "bob", "dave"):
        directory.delete(dns[name])
    guarded = config_of(directory.url, roles=config.sources.ldap.roles, max_deletions=2)
    events_before, mark_before = event_types(), current_watermark(config)
    with pytest.raises(PullFailed) as exc:
        pull(guarded, full=True)
    assert "would delete 3 users, more than max_deletions 2; nothing was stored" in str(exc.value)
    assert exc.value.result.stopped_by_guard and event_types() == events_before
    assert current_watermark(config) == mark_before
    assert not any(users()[n][1] for n in ("alice", "bob", "dave"))
    path = write_directory_config(tmp_path, directory, max_deletions=2)
    cli = runner.invoke(app, ["pull", "--full", "--config", str(path)])
    assert cli.exit_code == 3 and "would delete 3 users" in cli.output
    allowed = pull(guarded, full=True, max_deletions=3)
    assert allowed.events == {"user.deleted": 3} and all(users()[n][1] for n in ("alice", "bob", "dave"))


def write_directory_config(tmp_path, directory, scim=None, **ldap):
    import yaml

    data = {"tenant_domain": "example.com", "retry": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.05},
            "sources": {"ldap": settings(**{"url": directory.url, **ldap})}}
    if scim is not None:
        data["connectors"] = [{"name": "app", "type": "scim2", "scim2": {
            "base_url": scim.url, "auth": {"type": "bearer", "token": "env:TEST_SCIM_LDAP_TOKEN"}}}]
    path = tmp_path / f"outbound-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_refused_entries_are_named_emit_nothing_keep_the_watermark_and_the_rest_is_stored(directory, sqlite_url,
                                                                                         tmp_path):
    # employeeNumber as the anchor, so that an entry can lack it or share it (entryUUID cannot).
    for n, name in enumerate(("alice", "bob", "carol")):
        directory.add_person(name, employeeNumber=str(100 + n))
    config = config_of(directory.url, anchor="employeeNumber")
    first = pull(config)
    assert first.events == {"user.created": 3}
    mark = current_watermark(config)
    directory.add_person("dave")  # no employeeNumber
    directory.add_person("erin", employeeNumber="100")  # alice's
    directory.add(f"cn=nouid,{PEOPLE}", ["inetOrgPerson"], cn="nouid", sn="x", employeeNumber="200")
    directory.add(f"ou=contractors,{PEOPLE}", ["organizationalUnit"], ou="contractors")
    directory.add(f"uid=bob,ou=contractors,{PEOPLE}", ["inetOrgPerson"], uid="bob", cn="b", sn="b", employeeNumber="300")
    directory.add_person("frank", mail="frank-at-example", employeeNumber="400")
    directory.add_person("gina", employeeNumber="500")  # the one good new entry
    with pytest.raises(PullFailed) as exc:
        pull(config)
    message = str(exc.value)
    for line in (f"uid=dave,{PEOPLE}: employeeNumber: the anchor attribute is missing",
                 f"uid=erin,{PEOPLE}: employeeNumber: the anchor '100' is also that of 1 other entries",
                 f"uid=alice,{PEOPLE}: employeeNumber: the anchor '100'",
                 f"cn=nouid,{PEOPLE}: uid: the username attribute is missing or empty",
                 f"uid=bob,ou=contractors,{PEOPLE}: uid: the username 'bob' is also that of 1 other entries",
                 f"uid=frank,{PEOPLE}: mail: user.email: must be an email address"):
        assert line in message, line
    assert "watermark was not moved" in message
    assert current_watermark(config) == mark
    assert set(users()) == {"alice", "bob", "carol", "gina"}  # gina's event was stored; no other
    path = write_directory_config(tmp_path, directory, anchor="employeeNumber")
    cli = runner.invoke(app, ["pull", "--config", str(path)])
    assert cli.exit_code == 1 and f"uid=dave,{PEOPLE}: employeeNumber" in cli.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case, message", [
    ("password", f"bind.dn {SERVICE_DN}: the directory refused the credentials (invalidCredentials)"),
    ("port", "url ldap://127.0.0.1:1: cannot connect"),
    # The right parentheses for the configuration's shape check; the client's parser refuses it.
    ("filter", "user_filter '(uid=*)(cn=*)': not a valid LDAP filter (missing boolean operator in filter)"),
])
def test_a_directory_that_cannot_be_read_fails_the_pull_and_stores_nothing(directory, sqlite_url, tmp_path,
                                                                          monkeypatch, case, message):
    directory.add_person("alice")
    changes = {"password": {}, "port": {"url": "ldap://127.0.0.1:1"}, "filter": {"user_filter": "(uid=*)(cn=*)"}}[case]
    if case == "password":
        monkeypatch.setenv("TEST_LDAP_PASSWORD", "wrong-" + SERVICE_PASSWORD)
    path = write_directory_config(tmp_path, directory, **changes)
    cli = runner.invoke(app, ["pull", "--config", str(path)])
    assert cli.exit_code == 1, cli.output
    assert message in cli.output and "Nothing was stored" in cli.output
    assert SERVICE_PASSWORD not in cli.output
    assert users() == {} and current_watermark(config_of()) is None


def test_ldaps_and_starttls_verify_the_server_against_the_ca_file(sqlite_url, monkeypatch, tmp_path):
    if not slapd_sandbox.available():
        pytest.skip("slapd is not installed (.ci/run installs it)")
    from connectors.ldap import DirectoryError
    from sandbox.salesforce import _make_pki

    monkeypatch.setenv("TEST_LDAP_PASSWORD", SERVICE_PASSWORD)
    other_ca = _make_pki(tmp_path)[0]
    with Slapd(size_limit=3, tls=True) as server:
        server.add_person("alice")
        assert pull(config_of(server.ldaps_url, ca_file=server.ca_file)).events == {"user.created": 1}
        assert pull(config_of(server.url, start_tls=True, ca_file=server.ca_file), full=True).users_read == 1
        for url, tls in ((server.ldaps_url, {}), (server.url, {"start_tls": True})):
            with pytest.raises(DirectoryError) as exc:  # a server the CA file does not vouch for
                pull(config_of(url, ca_file=other_ca, **tls))
            assert f"url {url}: cannot connect" in str(exc.value)


def test_an_unconfigured_pull_directory_run_completes_idle(tmp_path, sqlite_url, prefect_harness):
    from flows.pull import pull_directory

    path = tmp_path / "outbound.yaml"
    path.write_text("tenant_domain: example.com\n")
    state = pull_directory(config_path=str(path), return_state=True)
    assert state.is_completed() and state.result()["skipped"] == "sources.ldap is not configured"


def test_a_refused_entry_emits_nothing_not_even_the_role_change_its_groups_made(seeded):
    directory, config, dns, groups = seeded
    pull(config)
    before = event_types()
    directory.modify(dns["alice"], mail="alice-at-example")
    directory.modify(groups["staff"], member=[groups["builders"]])  # alice leaves staff (and so builders)
    with pytest.raises(PullFailed) as exc:
        pull(config)
    assert f"uid=alice,{PEOPLE}: mail: user.email" in str(exc.value)
    assert event_types() == before and users()["alice"][2] == ["builder", "staff"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_pull_while_one_runs_does_nothing_and_exits_4(seeded, tmp_path):
    from models.locks import lease

    directory, _, _, _ = seeded
    path = write_directory_config(tmp_path, directory)
    with lease("pull:directory"):
        cli = runner.invoke(app, ["pull", "--config", str(path)])
    assert cli.exit_code == 4 and "another pull is running" in cli.output
    assert users() == {} and current_watermark(config_of()) is None


def test_changed_settings_make_the_next_pull_full(seeded):
    directory, config, _, _ = seeded
    pull(config)
    changed = config_of(directory.url, roles=config.sources.ldap.roles, user_store="CORP")
    result = pull(changed)
    assert result.full and result.why == "the settings that choose or map entries changed"


def test_ranges_are_followed_by_the_connector_not_by_ldap3(directory):
    from connectors.ldap import connected

    with connected(config_of(directory.url).sources.ldap) as conn:
        assert conn.auto_range is False  # see connectors.ldap.follow_ranges and tests/test_pull_ad_seams.py


def test_explain_names_the_entry_and_the_attribute_behind_each_field_and_the_group_behind_each_role(seeded,
                                                                                                   tmp_path):
    directory, config, dns, groups = seeded
    path = write_directory_config(tmp_path, directory, roles=config.sources.ldap.roles)
    assert runner.invoke(app, ["pull", "--config", str(path)]).exit_code == 0
    cli = runner.invoke(app, ["explain", "alice", "--config", str(path)])
    assert cli.exit_code == 0, cli.output
    lines = [line.strip() for line in cli.output.splitlines()]
    assert lines[1].startswith(f"directory directory: entry {dns['alice']} (anchor ")
    for line in (f"username ← uid ({dns['alice']})", f"email ← mail ({dns['alice']})",
                 f"display_name ← cn ({dns['alice']})",
                 f"role staff ← member of {groups['staff']} (directly or through nested groups)",
                 f"role builder ← member of {groups['builders']} (directly or through nested groups)"):
        assert line in lines, line
    as_json = runner.invoke(app, ["explain", "alice", "--config", str(path), "--json"])
    assert f"email ← mail ({dns['alice']})" in json.loads(as_json.output)["directory"]
    changed = write_directory_config(tmp_path, directory, roles=config.sources.ldap.roles,
                                     attributes={"uid": "username", "description": "email"})
    cli = runner.invoke(app, ["explain", "alice", "--config", str(changed)])
    assert "attribute map or rules changed since the last complete pull" in cli.output
    assert f"email ← description ({dns['alice']})" in cli.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_user_added_to_the_directory_reaches_the_scim_target_after_a_pull_and_a_drain(seeded, scim, tmp_path,
                                                                                      monkeypatch):
    import asyncio

    from flows.provision import provision_user
    from flows.pull import pull_directory

    directory, config, dns, groups = seeded
    monkeypatch.setenv("TEST_SCIM_LDAP_TOKEN", scim.token)
    path = write_directory_config(tmp_path, directory, scim, roles=config.sources.ldap.roles)
    first = runner.invoke(app, ["pull", "--config", str(path)])
    assert first.exit_code == 0, first.output
    assert "full pull (no watermark yet (first pull))" in first.output and "5 user.created" in first.output
    asyncio.run(provision_user(config_path=str(path), return_state=True))
    accounts = {u["userName"]: u.get("active", True) for u in scim.users()}
    assert accounts == {"alice": True, "bob": True, "carol": False, "dave": True, "erin": True}
    directory.add_person("grace", "Grace", "Hopper")
    directory.delete(dns["erin"])
    state = pull_directory(full=True, config_path=str(path), return_state=True)
    assert state.is_completed()
    asyncio.run(provision_user(config_path=str(path), return_state=True))
    accounts = {u["userName"]: u.get("active", True) for u in scim.users()}
    assert "grace" in accounts and "erin" not in accounts
    directory.add(f"cn=nouid,{PEOPLE}", ["inetOrgPerson"], cn="nouid", sn="x")
    failed = pull_directory(config_path=str(path), return_state=True)
    assert failed.is_failed() and "cn=nouid" in failed.message
