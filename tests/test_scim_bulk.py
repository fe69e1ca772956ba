"""/Bulk per RFC 7644 §3.7 against conformant SCIM servers that differ from scim2-server's defaults:
answers without bulkId for non-POST operations, advertised and unadvertised size caps (413), no
/Bulk at all, and answers left out (an outcome we cannot know without looking).
"""

import os
from contextlib import contextmanager

import pytest
import requests
from hypothesis import given, settings, strategies as st

from connectors.base import Account, BatchOp
from connectors.errors import ConnectorError, OutcomeUnknown, RateLimited
from connectors.factory import get_connector
from connectors.outcome import known_not_applied, resolve_unknown
from connectors.scim2 import match_answers
from models.config import ConnectorConfig
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox

BULK = "/v2/Bulk"


@contextmanager
def target(name: str, **variant):
    with ScimSandbox(**variant) as sandbox:
        os.environ[f"T_BULK_{name.upper()}"] = sandbox.token
        cfg = ConnectorConfig.model_validate({"name": name, "type": "scim2", "scim2": {
            "base_url": sandbox.url, "auth": {"type": "bearer", "token": f"env:T_BULK_{name.upper()}"}}})
        yield get_connector(cfg), sandbox


def accounts(n: int, prefix: str = "bulk") -> list[Account]:
    return [Account(user_name=f"{prefix}{i}", external_id=f"ext-{prefix}{i}", given_name=f"G{i}",
                    family_name="Family", email=f"{prefix}{i}@example.com") for i in range(n)]


def bulk_calls(sandbox, since: int = 0) -> list[tuple[str, str, int, int]]:
    return [a for a in sandbox.answered[since:] if a[0] == "POST" and a[1] == BULK]


def no_errors(results):
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors


# --- pairing answers with operations (no server) ---------------------------------------------

ITEMS = [{"bulkId": "op0", "method": "POST", "path": "/Users"},
         {"bulkId": "op1", "method": "PATCH", "path": "/Users/a"},
         {"bulkId": "op2", "method": "DELETE", "path": "/Users/b"},
         {"bulkId": "op3", "method": "PATCH", "path": "/Users/a"}]


@pytest.mark.parametrize("answers, expected", [
    # every bulkId echoed, in any order
    ([{"bulkId": "op3"}, {"bulkId": "op2"}, {"bulkId": "op1"}, {"bulkId": "op0"}], {0: 3, 1: 2, 2: 1, 3: 0}),
    # bulkId for the POST only; the others by method + location (absolute URL), the same resource twice in order
    ([{"bulkId": "op0", "method": "POST"}, {"method": "PATCH", "location": "https://x/v2/Users/a"},
      {"method": "DELETE", "location": "https://x/v2/Users/b"}, {"method": "PATCH", "location": "/v2/Users/a"}],
     {0: 0, 1: 1, 2: 2, 3: 3}),
    # nothing to go by but the order, every operation answered
    ([{"status": "201"}, {"status": "200"}, {"status": "204"}, {"status": "200"}], {0: 0, 1: 1, 2: 2, 3: 3}),
    # one answer missing and no ids or locations: position cannot be trusted, nothing is guessed
    ([{"status": "201"}, {"status": "200"}, {"status": "204"}], {}),
    # one answer missing, the rest identifiable: the unanswered one stays unpaired
    ([{"bulkId": "op0", "method": "POST"}, {"method": "DELETE", "location": "/v2/Users/b"},
      {"method": "PATCH", "location": "/v2/Users/a"}], {0: 0, 2: 1, 1: 2}),
    # garbage where ids go is not trusted (nor a crash); a location that is not a string says nothing
    ([{"bulkId": ["op0"], "location": 7}, {"bulkId": {"x": 1}}, {"method": None, "location": 7}, {}], {2: 2, 3: 3}),
    # a positional answer that contradicts its operation (another method) is not taken
    ([{"status": "201"}, {"method": "DELETE", "status": "204"}, {"status": "204"}, {"status": "200"}],
     {0: 0, 2: 2, 3: 3}),
])
def test_answers_are_paired_by_bulk_id_then_location_then_position(answers, expected):
    paired = match_answers(ITEMS, answers)
    assert {k: next(i for i, a in enumerate(answers) if a is v) for k, v in paired.items()} == expected


# --- (a) bulkId only for POST ----------------------------------------------------------------

def test_updates_disables_enables_and_deletes_succeed_when_non_post_answers_have_no_bulk_id():
    with target("postids", bulk_ids="post") as (connector, sandbox):
        created = connector.apply_batch([BatchOp("create", account=a) for a in accounts(5)])
        no_errors(created)
        ids = [a.id for a in created]
        assert all(ids) and len(set(ids)) == 5

        before = len(sandbox.answered)
        updated = connector.apply_batch([BatchOp("update", remote_id=i, changes={"family_name": "Byron"}) for i in ids])
        no_errors(updated)
        disabled = connector.apply_batch([BatchOp("disable", remote_id=i) for i in ids[:3]])
        no_errors(disabled)
        enabled = connector.apply_batch([BatchOp("enable", remote_id=ids[0])])
        no_errors(enabled)
        deleted = connector.apply_batch([BatchOp("delete", remote_id=ids[4])])
        no_errors(deleted)
        assert len(bulk_calls(sandbox, before)) == 4  # one /Bulk request per batch, nothing resent
        assert [a for a in sandbox.answered[before:] if a[1] != BULK] == []

        users = {u["userName"]: u for u in sandbox.users()}
        assert sorted(users) == ["bulk0", "bulk1", "bulk2", "bulk3"]
        assert {u["name"]["familyName"] for u in users.values()} == {"Byron"}
        assert [users[f"bulk{i}"]["active"] for i in range(4)] == [True, False, False, True]


@pytest.mark.usefixtures("prefect_harness")
def test_reconcile_links_updates_and_disables_with_no_failures(tmp_path, sqlite_url):
    from helpers import write_config
    from models.db import session_scope
    from models.identity import find_user
    from test_reconcile import add_users, reconcile

    with ScimSandbox(bulk_ids="post") as sandbox:
        config = write_config(tmp_path, sandbox)
        add_users(8)
        os.environ["T_BULK_SEED"] = sandbox.token
        connector = get_connector(ConnectorConfig.model_validate({
            "name": "seed", "type": "scim2",
            "scim2": {"base_url": sandbox.url, "auth": {"type": "bearer", "token": "env:T_BULK_SEED"}}}))
        for i in range(5):  # drifted accounts already there: linked by username, then updated
            connector.create_user(Account(user_name=f"user{i}", given_name="Old", family_name="Name"))
        code, out = reconcile(config)
        assert code == 0, out
        assert "succeeded 8, failed 0" in out, out
        with session_scope() as session:
            for name in ("user5", "user6"):
                find_user(session, "example.com", "PRIMARY", name).active = False
            find_user(session, "example.com", "PRIMARY", "user7").family_name = "Changed"
        code, out = reconcile(config, "--yes")
        assert code == 0, out
        assert "failed 0" in out and "succeeded 3" in out, out
        users = {u["userName"]: u for u in sandbox.users()}
        assert [users[f"user{i}"]["active"] for i in (5, 6)] == [False, False]
        assert users["user7"]["name"]["familyName"] == "Changed"
        assert {users[f"user{i}"]["name"]["givenName"] for i in range(5)} == {f"G{i}" for i in range(5)}
        assert {a[2] for a in bulk_calls(sandbox)} == {200}


# --- (b) size caps ---------------------------------------------------------------------------

def test_requests_are_sized_to_max_operations_and_max_payload_size():
    with target("capped", bulk=(True, 4, 1_000)) as (connector, sandbox):
        results = connector.apply_batch([BatchOp("create", account=a) for a in accounts(10)])
        no_errors(results)
        calls = bulk_calls(sandbox)
        assert all(status == 200 and size <= 1_000 for _, _, status, size in calls), calls
        # each create is ~330 bytes: the payload cap (not the 4-operation cap) decides, 2 a request
        assert len(calls) == 5
        ids = [r.id for r in results]
        deletes = [BatchOp("delete", remote_id=i) for i in ids]  # ~80 bytes each: now maxOperations decides
        before = len(sandbox.answered)
        no_errors(connector.apply_batch(deletes))
        calls = bulk_calls(sandbox, before)
        assert len(calls) == 3 and max(size for *_, size in calls) < 500  # 10 operations, 4 at most per request
        assert sandbox.users() == []


def test_a_413_splits_the_request_in_two_and_the_size_is_remembered():
    # The server advertises 1 MiB, but something in front of it refuses bodies over 1200 bytes.
    with target("proxied", body_limit=1_200) as (connector, sandbox):
        results = connector.apply_batch([BatchOp("create", account=a) for a in accounts(8)])
        no_errors(results)
        assert len(sandbox.users()) == 8
        calls = bulk_calls(sandbox)
        statuses = [status for _, _, status, _ in calls]
        # 8 ops (~2.7 kB) -> 413; halves of 4 (~1.3 kB) -> 413, 413; quarters of 2 -> 4 x 200
        assert statuses == [413, 413, 200, 200, 413, 200, 200], calls
        before = len(sandbox.answered)
        more = connector.apply_batch([BatchOp("create", account=a) for a in accounts(6, prefix="more")])
        no_errors(more)
        # the learnt size (under the refused 4-op body) sizes the next batch: 3 ops a request, no 413 any more
        assert [s for _, _, s, _ in bulk_calls(sandbox, before)] == [200, 200]


def test_an_operation_too_large_for_any_bulk_request_goes_on_its_own():
    with target("tiny", bulk=(True, 10, 300)) as (connector, sandbox):
        results = connector.apply_batch([BatchOp("create", account=a) for a in accounts(2)])
        no_errors(results)
        assert bulk_calls(sandbox) == [] and [a[:3] for a in sandbox.answered if a[0] == "POST"] == [
            ("POST", "/v2/Users", 201)] * 2


# --- (c) no /Bulk ------------------------------------------------------------------------------

def test_without_bulk_single_requests_run_concurrently_within_max_workers():
    latency = FaultPlan(rate=1.0, kinds=("latency",), latency=0.05, only_methods=("POST", "PATCH"), seed=1)
    with target("nobulk", bulk=(False, 0, 0), faults=latency) as (connector, sandbox):
        results = connector.apply_batch([BatchOp("create", account=a) for a in accounts(12)], max_workers=4)
        no_errors(results)
        assert bulk_calls(sandbox) == []
        assert len([a for a in sandbox.answered if a[:3] == ("POST", "/v2/Users", 201)]) == 12
        assert 2 <= sandbox.peak_in_flight <= 4
        sandbox.peak_in_flight = 0
        no_errors(connector.apply_batch([BatchOp("disable", remote_id=r.id) for r in results], max_workers=3))
        assert 2 <= sandbox.peak_in_flight <= 3
        assert len([a for a in sandbox.answered if a[0] == "PATCH"]) == 12


# --- answers left out --------------------------------------------------------------------------

def test_an_unanswered_operation_is_outcome_unknown_and_looking_settles_it():
    with target("dropping", drop_bulk_answers=1) as (connector, sandbox):
        created = connector.apply_batch([BatchOp("create", account=a) for a in accounts(3)])
        assert isinstance(created[2], OutcomeUnknown) and "may have been applied" in str(created[2])
        assert len(sandbox.users()) == 3  # it did apply
        ops = [BatchOp("create", account=a) for a in accounts(3)]
        settled = resolve_unknown(connector, ops, created)
        assert settled[2].user_name == "bulk2" and settled[2].id  # found by its externalId, not resent
        assert settled[:2] == created[:2]

        ids = [a.id for a in settled]
        updates = [BatchOp("update", remote_id=i, changes={"family_name": "Byron"}) for i in ids]
        results = connector.apply_batch(updates)
        assert isinstance(results[2], OutcomeUnknown)
        # someone changes it again before we look: the read shows it not in effect, so it is resent
        headers = {"Authorization": f"Bearer {sandbox.token}"}
        raw = requests.get(f"{sandbox.url}/Users/{ids[2]}", headers=headers).json()
        raw.pop("meta")
        raw["name"]["familyName"] = "Other"
        requests.put(f"{sandbox.url}/Users/{ids[2]}", json=raw, headers=headers).raise_for_status()
        looked = resolve_unknown(connector, updates, results)[2]
        assert known_not_applied(looked) and "did not apply" in str(looked)
        before = len(sandbox.answered)
        deletes = [BatchOp("delete", remote_id=i) for i in ids]
        results = connector.apply_batch(deletes)
        assert isinstance(results[2], OutcomeUnknown)
        assert resolve_unknown(connector, deletes, results) == [None, None, None]
        assert all(a[0] == "GET" for a in sandbox.answered[before + 1:])  # looking only reads


def test_a_bulk_request_cut_off_after_sending_is_outcome_unknown_but_a_refused_one_is_not():
    from connectors.errors import TransientError

    dropped = FaultPlan(rate=1.0, kinds=("drop",), only_methods=("POST",), seed=3)
    with target("cutoff", faults=dropped) as (connector, sandbox):
        ops = [BatchOp("create", account=a) for a in accounts(3)]
        results = connector.apply_batch(ops)
        assert all(isinstance(r, OutcomeUnknown) for r in results), results
        assert "may have been applied" in str(results[0])
        # the sandbox drops before serving: nothing applied, and the read shows it (so they are resent)
        assert all(known_not_applied(r) for r in resolve_unknown(connector, ops, results))
    os.environ["T_BULK_GONE"] = "x"
    gone = get_connector(ConnectorConfig.model_validate({"name": "gone", "type": "scim2", "scim2": {
        "base_url": "http://127.0.0.1:1/v2", "auth": {"type": "bearer", "token": "env:T_BULK_GONE"}}}))
    gone._spc = {"bulk": {"supported": True, "maxOperations": 10, "maxPayloadSize": 10_000}, "patch": {"supported": True}}
    refused = gone.apply_batch([BatchOp("disable", remote_id="r1")])
    assert isinstance(refused[0], TransientError) and not isinstance(refused[0], OutcomeUnknown)
    assert known_not_applied(refused[0])  # the connection was refused: nothing was sent


def test_garbled_answers_are_outcome_unknown_or_named_errors_never_a_crash():
    def garble(answer):
        n = int(answer.get("bulkId", "op0")[2:])
        if n == 0:
            answer["status"] = "OK"  # no number: applied or not, nobody knows
        elif n == 1:
            answer.pop("location", None)  # a created user without a location
            answer.pop("response", None)
        elif n == 2:
            answer["status"] = 400
            answer["response"] = {"detail": 7, "scimType": ["x"]}  # not strings: left out of the message

    with target("garbled", rewrite_bulk_answer=garble) as (connector, sandbox):
        results = connector.apply_batch([BatchOp("create", account=a) for a in accounts(4)])
        assert isinstance(results[0], OutcomeUnknown) and "gives no status" in str(results[0])
        assert isinstance(results[1], OutcomeUnknown) and "no location or id" in str(results[1])
        assert isinstance(results[2], ConnectorError) and str(results[2]) == "POST /Users: HTTP 400"
        assert results[3].id
        ops = [BatchOp("create", account=a) for a in accounts(4)]
        settled = resolve_unknown(connector, ops, results)
        assert settled[0].id and settled[1].id  # both were created: found by externalId, not resent


def test_a_bulk_answer_keeps_retry_after_and_the_shared_status_mapping():
    from connectors.scim2.transport import scim_error

    error = scim_error("PATCH /Users/x", 429, {"detail": "slow"}, 2.5)
    assert isinstance(error, RateLimited) and error.retry_after == 2.5
    error = scim_error("PATCH /Users/x", 503, {}, 4.0)
    assert isinstance(error, ConnectorError) and error.retry_after == 4.0 and error.status == 503


# --- pairing, for any server behaviour within the RFC ---------------------------------------------


@st.composite
def bulk_exchanges(draw):
    """Operations, and what a conformant server answers: every answer true, bulkIds possibly only for
    POSTs, locations as URLs, some answers possibly missing, and (with full bulkIds) any order."""
    n = draw(st.integers(1, 12))
    items, answers = [], []
    for i in range(n):
        method = draw(st.sampled_from(["POST", "PATCH", "DELETE", "PUT"]))
        path = "/Users" if method == "POST" else f"/Users/{draw(st.sampled_from('abc'))}"
        items.append({"bulkId": f"op{i}", "method": method, "path": path})
        answer = {"method": method, "status": draw(st.sampled_from(["200", "201", "204", "404", "409"])), "_i": i}
        if method != "POST" or answer["status"] < "400":
            answer["location"] = f"https://h/v2{path}" + ("/new" if method == "POST" else "")
        answers.append(answer)
    ids = draw(st.sampled_from(["all", "post", "none"]))
    for answer in answers:
        if ids == "all" or (ids == "post" and answer["method"] == "POST"):
            answer["bulkId"] = f"op{answer['_i']}"
    kept = [a for a in answers if not draw(st.booleans())] if draw(st.booleans()) else answers
    if ids == "all":
        kept = draw(st.permutations(kept))
    return items, list(kept), len(kept) == n


@settings(derandomize=True, max_examples=400, deadline=None)
@given(bulk_exchanges())
def test_no_answer_is_ever_given_to_an_operation_it_does_not_describe(exchange):
    items, answers, complete = exchange
    paired = match_answers(items, answers)
    used = [id(a) for a in paired.values()]
    assert len(used) == len(set(used))  # no answer twice
    for k, answer in paired.items():
        truth = items[answer["_i"]]
        # the answer is this operation's, or one indistinguishable from it (same method, same resource)
        assert (truth["method"], truth["path"]) == (items[k]["method"], items[k]["path"]), (k, answer)
    if complete:
        assert {k: a["_i"] for k, a in paired.items()} == {i: i for i in range(len(items))}
