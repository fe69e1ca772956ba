"""Google user aliases by rule, against the Directory API sandbox over real HTTP."""

import pytest

from connectors.base import Account, BatchOp
from connectors.errors import NotFound, Rejected
from connectors.factory import clear_cache, get_connector
from models.config import load_config, parse_config
from models.validation import InvalidInput
from sandbox.google import GoogleSandbox
from targets import google_config
from test_google_targets import _config, reconcile, runner, user, write

from deployments.cli import app

pytestmark = pytest.mark.usefixtures("prefect_harness")
ALIASES = [{"value": "{UN}@alias.example.com"},
           {"roles": ["sales"], "attribute": "aliases"}]


def aliases(google) -> dict[str, list[str]]:
    return {u["primaryEmail"].split("@")[0]: sorted(u.get("aliases") or []) for u in google.users()}


@pytest.fixture
def google():
    with GoogleSandbox(domains=["example.com", "alias.example.com"]) as server:
        yield server
    clear_cache()


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("entry, expected", [
    ({"value": "{username}@a.example.com", "attribute": "aliases"}, "not both"),
    ({"roles": ["a"]}, "not neither"),
    ({"value": "sales@example.com"}, "no placeholder"),
    ({"value": "{username}"}, "not an address template"),
    ({"value": "{nickname}@a.example.com"}, "unknown local value 'nickname'"),
    ({"attribute": "my aliases"}, "attribute"),
    ({"value": "{username}@a.example.com", "when": 1}, "when"),
])
def test_bad_alias_entries_are_refused_at_load_naming_the_field(entry, expected):
    with pytest.raises(InvalidInput) as err:
        parse_config(_config(aliases=[entry]))
    assert expected in str(err.value)
    assert "connectors[0].google.aliases" in str(err.value)


def test_aliases_are_an_extra_attribute_compared_as_sorted_lower_case_text():
    cfg = parse_config(_config(aliases=ALIASES)).connectors[0]
    source = dict(cfg.attribute_map.extra)["aliases"]
    local = {"username": "ann", "user_name": "ann@example.com", "roles": frozenset({"sales"})}
    assert source.value(local, {"aliases": ["Ann.S@Example.com", "ann@example.com"]}) == \
        "ann.s@example.com, ann@alias.example.com"  # the primary address is not its own alias
    assert source.value(local, {"aliases": "x@example.com, y@example.com"}).count("@") == 3
    assert source.value({**local, "roles": frozenset()}, {"aliases": ["x@example.com"]}) == "ann@alias.example.com"
    assert "entry 2 (role sales: attributes.aliases)" in source.why(local, {"aliases": ["x@example.com"]})


# --- the sandbox: aliases as Google has them ----------------------------------------------------

def test_sandbox_aliases_follow_googles_rules(google):
    gws = get_connector(google_config(google, google={"aliases": ALIASES[:1]}))
    ann = gws.create_user(Account(user_name="ann@example.com", given_name="A", family_name="S",
                                  extra={"aliases": "ann@alias.example.com"}))
    bob = gws.create_user(Account(user_name="bob@example.com", given_name="B", family_name="S"))
    assert ann.extra["aliases"] == "ann@alias.example.com" and bob.extra["aliases"] == "none"
    assert gws.get_user(ann.id).extra["aliases"] == "ann@alias.example.com"  # the user resource lists them
    assert gws.aliases_of("ann@example.com") == {"ann@alias.example.com"}
    url = google.url + "/admin/directory/v1/users/{}/aliases"
    session = gws.session
    other = session.post(url.format("bob@example.com"), json={"alias": "bob@elsewhere.org"})
    assert other.status_code == 400 and "Domain not found" in other.text
    for taken in ("ann@alias.example.com", "ann@example.com"):  # another user's alias, a primary address
        answer = session.post(url.format("bob@example.com"), json={"alias": taken})
        assert answer.status_code == 409 and "Entity already exists." in answer.text
    assert session.post(url.format("nobody@example.com"), json={"alias": "n@example.com"}).status_code == 404
    assert session.get(url.format("nobody@example.com")).status_code == 404
    assert session.delete(url.format("bob@example.com") + "/ann@alias.example.com").status_code == 404
    # An alias is a user key, and no user can take it as its address.
    assert session.get(google.url + "/admin/directory/v1/users/ann@alias.example.com").json()["id"] == ann.id
    with pytest.raises(Exception, match="Entity already exists"):
        gws.create_user(Account(user_name="ann@alias.example.com", given_name="X", family_name="Y"))
    with pytest.raises(Rejected, match="add alias ann@alias.example.com"):
        gws.update_user(bob.id, {"extra.aliases": "ann@alias.example.com"}, bob)
    with pytest.raises(NotFound):
        gws.set_aliases("nobody@example.com", {"n@example.com"})
    gws.update_user(ann.id, {"extra.aliases": "a2@alias.example.com"}, ann)  # one added, one removed
    assert aliases(google)["ann"] == ["a2@alias.example.com"]
    gws.delete_user(ann.id)  # a deleted user's aliases are free again
    assert session.post(url.format("bob@example.com"), json={"alias": "a2@alias.example.com"}).status_code == 200


# --- end to end: reconciliation, drift, explain ---------------------------------------------

def test_aliases_by_rule_are_added_on_create_changed_and_drift_is_fixed(tmp_path, sqlite_url, google):
    config = write(tmp_path, google, aliases=ALIASES)
    user("ann", roles=["sales"], aliases="ann.smith@example.com, Sales.Ann@alias.example.com")
    user("bob", aliases="ignored@example.com")  # not in sales: only the pattern
    reconcile(config)
    assert aliases(google) == {"ann": ["ann.smith@example.com", "ann@alias.example.com",
                                       "sales.ann@alias.example.com"],
                               "bob": ["bob@alias.example.com"]}
    assert "nothing to do" in reconcile(config, "--dry-run")

    user("ann", roles=["sales"], aliases="ann.smith@example.com")  # one goes: it is removed
    assert "update 1" in reconcile(config, "--dry-run")
    reconcile(config)
    assert aliases(google)["ann"] == ["ann.smith@example.com", "ann@alias.example.com"]

    gws = get_connector(load_config(config).connector("gws"))  # changed in Google: drift, put back
    bob = next(a for a in gws.iter_users() if a.user_name.startswith("bob"))
    gws.set_aliases(bob.user_name, {"bob.by.hand@example.com"})
    assert "update 1" in reconcile(config, "--dry-run")
    reconcile(config)
    assert aliases(google)["bob"] == ["bob@alias.example.com"]
    assert "nothing to do" in reconcile(config, "--dry-run")

    explained = runner.invoke(app, ["explain", "ann", "--config", config])
    assert ("aliases ← google.aliases entry 1 (any user: {UN}@alias.example.com), "
            "entry 2 (role sales: attributes.aliases) = 'ann.smith@example.com, ann@alias.example.com'"
            in explained.output), explained.output


def test_a_taken_alias_fails_the_created_user_naming_it_and_the_next_run_adds_it(tmp_path, sqlite_url, google):
    config = write(tmp_path, google, aliases=ALIASES[1:])
    squatter = get_connector(google_config(google)).create_user(
        Account(user_name="sales@example.com", given_name="S", family_name="Q"))
    user("ann", roles=["sales"], aliases="sales@example.com,ann.s@example.com")
    user("bob", roles=["sales"], aliases="bob.s@example.com")
    out = reconcile(config, code=1)
    assert "ann" in out and "sales@example.com" in out and "retried for its aliases" in out, out
    have = aliases(google)
    assert have["bob"] == ["bob.s@example.com"]  # the rest of the batch proceeds
    assert have["ann"] == ["ann.s@example.com"]  # the account exists with the alias that could be added

    get_connector(google_config(google)).delete_user(squatter.id)  # the address is freed
    reconcile(config)
    assert aliases(google)["ann"] == ["ann.s@example.com", "sales@example.com"]
    assert "nothing to do" in reconcile(config, "--dry-run")


def test_alias_calls_are_counted_and_a_full_listing_reads_no_more():
    with GoogleSandbox(domains=["example.com", "alias.example.com"]) as google:
        gws = get_connector(google_config(google, google={"aliases": ALIASES[:1]}))
        ops = [BatchOp("create", account=Account(user_name=f"u{n}@example.com", given_name="U", family_name="V",
                                                 extra={"aliases": f"u{n}@alias.example.com"})) for n in range(10)]
        before = len(google.requests)
        results = gws.apply_batch(ops, max_workers=4)
        sent = [(m, p) for m, p in google.requests[before:] if p != "/token"]
        assert all(isinstance(r, Account) and r.extra["aliases"] == r.user_name.replace("@", "@alias.")
                   for r in results), results
        assert sent.count(("POST", "/batch/admin/directory_v1")) == 1
        assert len(sent) == 11  # a new account holds no alias: nothing read, nothing removed
        ups = [BatchOp("update", remote_id=r.id, changes={"extra.aliases": "none"}) for r in results[:3]]
        before = len(google.requests)
        assert all(isinstance(r, Account) and r.extra["aliases"] == "none" for r in gws.apply_batch(ups))
        methods = [m for m, p in google.requests[before:] if p != "/token"]
        assert methods.count("DELETE") == 3 and methods.count("GET") == 6  # per user: its aliases, then itself
        before = len(google.requests)
        assert len(list(gws.iter_users())) == 10
        assert len([p for m, p in google.requests[before:] if p != "/token"]) == 1  # one page of users
    clear_cache()
