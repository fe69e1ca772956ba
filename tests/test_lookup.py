"""A batch's candidate accounts by batched lookups (`find_users`): the same accounts the listing gives,
in requests bounded by the batch, not by the target's size.

Two SCIM implementations: scim2-server (its `eq` ignores case on userName and emails, as RFC 7643
says) and SCIMMY (tests/scimmy/server.mjs, node; its filter compares exactly and it has no
POST /Users/.search). Requests are counted by the connector (`requests_sent`) and by scim2-server
(`answered`).
"""

import math
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from connectors.base import Account, BatchOp, Lookup, find_each, matching
from connectors.factory import get_connector
from connectors.scim2.lookup import MAX_TERMS
from models.kinds import Action
from sandbox.scim import ScimSandbox
from targets import scim2_config

SCIMMY = Path(__file__).parent / "scimmy"


def _account(name: str, external_id=None, email=None) -> Account:
    return Account(user_name=name, external_id=external_id, given_name="Given", family_name="Family",
                   email=email or f"{name.lower()}@example.com")


def _fill(connector, accounts: list[Account]) -> list[Account]:
    """Create `accounts` in the target (through /Bulk where it has one); the created accounts."""
    made = connector.apply_batch([BatchOp(Action.CREATE, account=a) for a in accounts], max_workers=4)
    assert all(isinstance(m, Account) for m in made), [m for m in made if not isinstance(m, Account)][:3]
    return made


def _seed(connector, strangers: int, tag: str):
    """A target holding: ours (externalId = our id), one found only by email, one whose userName is
    spelt in another case, a mapped account renamed, and `strangers` nobody looks for. Returns the
    batch's keys and what each special account is."""
    ours = _fill(connector, [_account(f"our{tag}{i}", external_id=f"ext-{tag}-{i}") for i in range(12)])
    by_email = connector.create_user(_account(f"Someone{tag}", email=f"Mail.Only{tag}@Example.com"))
    other_case = connector.create_user(_account(f"Carol.{tag}", email=f"carol-{tag}@example.org"))
    renamed = connector.create_user(_account(f"renamed{tag}", email=f"renamed-{tag}@example.org"))
    if strangers:
        _fill(connector, [_account(f"stranger{tag}{i}") for i in range(strangers)])
    keys = [Lookup(external_id=f"ext-{tag}-{i}", user_name=f"our{tag}{i}") for i in range(12)]
    keys += [Lookup(external_id=f"local-{tag}-{i}", user_name=f"new{tag}{i}", email=f"new{tag}{i}@example.com")
             for i in range(20)]  # users not in the target yet
    keys += [Lookup(external_id=f"local-{tag}-mail", user_name=f"wanted{tag}", email=f"mail.only{tag}@example.com"),
             Lookup(external_id=f"local-{tag}-case", user_name=f"carol.{tag}".lower()),
             Lookup(remote_id=renamed.id, external_id=f"local-{tag}-renamed", user_name=f"now-called-{tag}")]
    return keys, {"ours": {a.id for a in ours}, "email": by_email.id, "case": other_case.id, "renamed": renamed.id}


def _ids(accounts) -> set[str]:
    return {a.id for a in accounts}


def _check_same_as_listing(connector, keys, special):
    listed = matching(connector.iter_users(), keys)
    before = connector.requests_sent
    found = connector.find_users(keys)
    sent = connector.requests_sent - before
    assert _ids(found) == _ids(listed)
    assert len(found) == len(_ids(found))  # each account once
    assert special["ours"] <= _ids(found)
    assert {special["email"], special["case"], special["renamed"]} <= _ids(found)
    return found, sent


def _terms(keys) -> int:
    return sum(bool(k.external_id) + bool(k.user_name) + bool(k.email) for k in keys)


# --- scim2-server -------------------------------------------------------------------------------

@pytest.fixture
def scim():
    with ScimSandbox() as server:
        connector = get_connector(scim2_config(server, name=f"lookup-{uuid.uuid4().hex[:6]}"))
        yield connector, server


def test_scim2_server_ignores_case_in_eq_as_rfc_7643_says(scim):
    connector, _ = scim
    connector.create_user(_account("Dora", email="Dora@Example.COM"))
    assert connector.compares_caseless("userName") and connector.compares_caseless("emails.value")


@pytest.mark.parametrize("strangers", [30, 300])
def test_batched_lookup_finds_what_the_listing_finds_in_requests_bounded_by_the_batch(scim, strangers):
    connector, server = scim
    keys, special = _seed(connector, strangers, "a")
    connector.use_profile({"service_provider_config": {"filter": {"supported": True, "maxResults": 10}}})
    connector.compares_caseless("userName"), connector.compares_caseless("emails.value")  # asked once, up front
    found, sent = _check_same_as_listing(connector, keys, special)
    chunk = min(MAX_TERMS, 10)
    # one request per chunk of terms, one read for the renamed mapped account: the target's size is not in it
    assert sent == math.ceil(_terms(keys) / chunk) + 1, sent
    assert len(list(connector.iter_users())) >= strangers  # (the target is that big)


def test_the_answers_are_paged(scim):
    """A term matching more accounts than a page holds: every page is read."""
    connector, _ = scim
    shared = _fill(connector, [_account(f"shares{i}", email="Team@Example.com") for i in range(25)])
    connector.use_profile({"service_provider_config": {"filter": {"supported": True, "maxResults": 10}}})
    keys = [Lookup(email="team@example.com")]
    assert _ids(connector.find_users(keys)) == _ids(shared) == _ids(matching(connector.iter_users(), keys))


def test_a_long_filter_is_posted_to_search(scim):
    connector, server = scim
    long = "x" * 60
    made = _fill(connector, [_account(f"{long}{i}") for i in range(5)])
    keys = [Lookup(user_name=f"{long}{i}", external_id=f"{long}-ext-{i}") for i in range(80)]
    before = len(server.answered)
    assert _ids(connector.find_users(keys)) == _ids(made)
    searched = [a for a in server.answered[before:] if a[1].endswith("/Users/.search")]
    assert searched and all(a[0] == "POST" and a[2] == 200 for a in searched)


def test_without_batched_lookups_each_user_is_looked_up(scim):
    """The default for a connector without `find_users`: the per-user lookups, each account once."""
    connector, _ = scim
    keys, special = _seed(connector, 0, "b")
    found = find_each(connector, keys)
    assert special["ours"] <= _ids(found) and {special["email"], special["case"], special["renamed"]} <= _ids(found)


def test_dry_run_searches_go_through(scim):
    connector, server = scim
    made = connector.create_user(_account("Eve"))
    dry = get_connector(scim2_config(server, name=connector.name), dry_run=True)
    keys = [Lookup(user_name="eve" + "e" * 5000), Lookup(user_name="eve")]  # long: POST /Users/.search
    assert _ids(dry.find_users(keys)) == {made.id}


# --- SCIMMY -------------------------------------------------------------------------------------

@pytest.fixture
def scimmy():
    if shutil.which("node") is None or not (SCIMMY / "node_modules" / "scimmy").is_dir():
        pytest.skip("SCIMMY is not installed (npm ci --prefix tests/scimmy)")
    token = uuid.uuid4().hex
    proc = subprocess.Popen(["node", str(SCIMMY / "server.mjs")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "SCIMMY_TOKEN": token})
    try:
        port = int(proc.stdout.readline().split()[1])
        server = SimpleNamespace(url=f"http://127.0.0.1:{port}/v2", token=token)
        yield get_connector(scim2_config(server, name=f"scimmy-{uuid.uuid4().hex[:6]}"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_scimmy_finds_what_the_listing_finds_though_its_filter_compares_exactly(scimmy):
    keys, special = _seed(scimmy, 30, "c")
    keys += [Lookup(external_id=f"{'y' * 80}{i}") for i in range(60)]  # too long for one GET
    _check_same_as_listing(scimmy, keys, special)
    assert scimmy.compares_caseless("userName") is False  # so the names came from the listing
    assert scimmy._search_post is False  # it has no POST /Users/.search: GETs instead


def test_scimmy_by_external_id_in_requests_bounded_by_the_batch(scimmy):
    """Keys an exact filter is right for (externalId is caseExact): no listing, one request per chunk."""
    made = _fill(scimmy, [_account(f"user{i}", external_id=f"ext-{i}") for i in range(40)])
    _fill(scimmy, [_account(f"stranger{i}") for i in range(60)])
    scimmy.use_profile({"service_provider_config": {"filter": {"supported": True, "maxResults": 15}}})
    keys = [Lookup(external_id=f"ext-{i}") for i in range(0, 40, 2)] + [Lookup(external_id="nobody")]
    before = scimmy.requests_sent
    found = scimmy.find_users(keys)
    assert scimmy.requests_sent - before == math.ceil(len(keys) / 15)
    assert _ids(found) == {made[i].id for i in range(0, 40, 2)} == _ids(matching(scimmy.iter_users(), keys))


# --- observe(): which way a batch's accounts are read ----------------------------------------------

def _state(keys: list[Lookup]):
    import pandas as pd

    ids = [f"u{i:03d}" for i in range(len(keys))]
    accounts = {i: Account(user_name=k.user_name or f"x-{i}", email=k.email) for i, k in zip(ids, keys)}
    mapped = [(i, k.remote_id) for i, k in zip(ids, keys) if k.remote_id]
    return SimpleNamespace(desired=pd.DataFrame({"local_id": ids}), deprovision=pd.DataFrame({"local_id": []}),
                           mappings=pd.DataFrame(mapped, columns=["local_id", "remote_id"]), accounts=accounts,
                           unseen=frozenset())


@pytest.mark.parametrize("lookup", ["filter", "each"])
def test_observe_reads_by_lookups_or_listing_and_finds_the_same(lookup):
    from tasks.plan import observe

    with ScimSandbox() as server:
        cfg = scim2_config(server, name=f"observe-{lookup}", lookup=lookup).model_copy(
            update={"match": ["user_name", "email"]})
        connector = get_connector(cfg)
        assert connector.capabilities.batched_lookup is (lookup == "filter")
        made = _fill(connector, [_account(f"Name{i}") for i in range(8)] + [_account(f"other{i}") for i in range(40)])
        keys = [Lookup(user_name=f"name{i}") for i in range(8)] + [Lookup(email=f"other{i}@EXAMPLE.com")
                                                                 for i in range(2)]
        keys += [Lookup(user_name=f"nobody{i}") for i in range(10)]
        state = _state(keys)
        want = {m.id for m in made[:10]}
        listed = observe(connector, cfg, state, target_size=20)  # a small target: its listing
        before = connector.requests_sent
        looked = observe(connector, cfg, state, target_size=10_000)  # a large one: lookups
        sent = connector.requests_sent - before
        assert _ids(listed) == _ids(looked) == want
        if lookup == "filter":
            assert sent <= 1 + 2  # one filter, and the case questions asked once
        else:
            assert sent == 8 + 2 * 2 + 10  # find_user's filters, key by key until one finds: grows with the batch


# --- Salesforce: a SOQL IN per 200 values -----------------------------------------------------------

def test_salesforce_finds_what_the_listing_finds_in_a_query_per_200_values():
    from targets import salesforce_target

    with salesforce_target() as (sf, sandbox):
        assert sf.capabilities.batched_lookup
        ours = [sf.create_user(Account(user_name=f"our{i}@example.com", external_id=f"ext-{i}", family_name="F",
                                       email=f"our{i}@example.com")) for i in range(6)]
        by_email = sf.create_user(Account(user_name="someone@example.com", family_name="F",
                                          email="Mail.Only@Example.com"))
        other_case = sf.create_user(Account(user_name="Carol@Example.com", family_name="F", email="c@example.org"))
        for i in range(15):
            sf.create_user(Account(user_name=f"stranger{i}@example.com", family_name="F"))
        keys = [Lookup(external_id=f"ext-{i}") for i in range(6)]
        keys += [Lookup(user_name="wanted@example.com", email="mail.only@example.com"),
                 Lookup(user_name="carol@example.com")]
        keys += [Lookup(external_id=f"new-{i}", user_name=f"new{i}@example.com", email=f"new{i}@example.com")
                 for i in range(80)]  # 6 + 3 + 240 values: two queries
        before = len([r for r in sandbox.requests if "/query" in r[1]])
        found = sf.find_users(keys)
        queries = len([r for r in sandbox.requests if "/query" in r[1]]) - before
        want = {a.id for a in ours} | {by_email.id, other_case.id}
        assert _ids(found) == _ids(matching(sf.iter_users(), keys)) == want
        assert queries == 2
