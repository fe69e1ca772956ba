"""The one retry runner against a real SCIM server that injects faults.

Waits go through the runner's injected `sleep`, so what it would have waited is checked without
waiting (one test measures a real wait too). Prefect's retry predicate answers at once.
"""

import time

import pytest
from prefect.states import Failed

from connectors.base import Account, BatchOp
from connectors.errors import RateLimited, Rejected, TransientError
from connectors.factory import get_connector
from connectors.outcome import unless_applied
from models.config import RetryPolicy
from models.locks import LockTimeout
from sandbox.faults import FaultPlan
from sandbox.scim import ScimSandbox
from targets import scim2_config
from tasks import retry

POLICY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=10.0, jitter=0.1)


class Waits(list):
    """An injected sleep: remembers each wait, and can end the fault once the first wait is asked for."""

    def __init__(self, plan: FaultPlan | None = None):
        super().__init__()
        self.plan = plan

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.plan is not None:
            self.plan.rate = 0.0


def test_a_429_with_retry_after_is_waited_at_least_that_long_then_sent_again():
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=3)
    with ScimSandbox(faults=plan) as scim:
        connector = get_connector(scim2_config(scim))
        waits = Waits(plan)
        found, tries = retry.run(lambda: connector.find_user(user_name="nobody"), POLICY, sleep=waits)
    assert found is None and tries == 2
    assert waits == [3.0]  # the back-off planned 0.01 s; the target asked for 3


def test_retry_after_is_capped_at_max_delay_and_tries_stop_at_attempts():
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("429",), retry_after=30)) as scim:
        connector = get_connector(scim2_config(scim))
        waits = Waits()
        policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=2.0, jitter=0.0)
        with pytest.raises(RateLimited) as raised:
            retry.run(lambda: connector.find_user(user_name="nobody"), policy, sleep=waits)
        assert raised.value.retry_after == 30
        assert waits == [2.0, 2.0] and len(scim.requests) == 3


def test_the_back_off_doubles_with_jitter_up_to_max_delay():
    with ScimSandbox(faults=FaultPlan(rate=1.0, kinds=("5xx",))) as scim:
        connector = get_connector(scim2_config(scim))
        waits = Waits()
        policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0, jitter=0.5)
        with pytest.raises(TransientError):
            retry.run(lambda: connector.find_user(user_name="nobody"), policy, sleep=waits)
        assert len(scim.requests) == 6 and len(waits) == 5
    for wait, planned in zip(waits, [1.0, 2.0, 4.0, 5.0, 5.0]):
        assert planned * 0.5 <= wait <= planned


def test_a_400_is_not_retried():
    with ScimSandbox() as scim:
        connector = get_connector(scim2_config(scim))
        account = connector.create_user(Account(user_name="ann", external_id="ann"))
        seen = len(scim.requests)
        waits = Waits()
        results, tries = retry.run_batch(connector.apply_batch, [
            BatchOp("update", remote_id=account.id, changes={"active": "maybe"})], POLICY, sleep=waits)
        assert isinstance(results[0], Rejected) and results[0].status == 400
        assert tries.count(0) == 1 and waits == []
        assert [r for r in scim.requests[seen:] if r[0] != "GET"] == [("POST", "/v2/Bulk")]
        seen = len(scim.requests)
        with pytest.raises(Rejected):
            retry.run(lambda: connector.update_user(account.id, {"active": "maybe"}, account), POLICY, sleep=waits)
        assert waits == [] and [r for r in scim.requests[seen:] if r[0] != "GET"] == [("PATCH", f"/v2/Users/{account.id}")]


def test_a_batch_resends_only_the_transiently_failed_ops_and_records_every_try():
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=2)
    with ScimSandbox(bulk=(False, 0, 0), faults=plan) as scim:
        connector = get_connector(scim2_config(scim))
        plan.rate = 0.0
        ann = connector.create_user(Account(user_name="ann", external_id="ann"))
        bob = connector.create_user(Account(user_name="bob", external_id="bob"))
        plan.rate, plan.only_paths = 1.0, (f"/Users/{bob.id}",)  # only bob's write is throttled
        ops = [BatchOp("update", remote_id=ann.id, changes={"active": "maybe"}),  # a 400
               BatchOp("update", remote_id=bob.id, changes={"display_name": "Bob B"}),  # a 429, then served
               BatchOp("disable", remote_id=ann.id)]
        seen = len(scim.requests)
        waits = Waits(plan)
        results, tries = retry.run_batch(
            connector.apply_batch, ops, POLICY, sleep=waits,
            look=lambda items, res, again: unless_applied(connector, items, res, again))
        sent = scim.requests[seen:]
    assert isinstance(results[0], Rejected) and not isinstance(results[1], BaseException)
    assert [tries.count(i) for i in range(3)] == [1, 2, 1]
    assert isinstance(tries.history[1][0][2], RateLimited) and tries.history[1][1][2] is None
    assert waits == [2.0]
    writes = [path.rsplit("/", 1)[1] for method, path in sent if method == "PATCH"]
    assert writes.count(bob.id) == 2  # a 429 is resent without a look: nothing was applied
    assert writes.count(ann.id) == 2  # the 400 and the disable, once each


def test_a_real_wait_lasts_at_least_retry_after():
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=1)
    with ScimSandbox(faults=plan) as scim:
        connector = get_connector(scim2_config(scim))

        def sleep(seconds: float) -> None:
            time.sleep(seconds)
            plan.rate = 0.0

        start = time.monotonic()
        _, tries = retry.run(lambda: connector.find_user(user_name="nobody"),
                             RetryPolicy(attempts=2, base_delay=0.0, max_delay=5.0, jitter=0.0), sleep=sleep)
        elapsed = time.monotonic() - start
    assert tries == 2 and elapsed >= 1.0


def test_prefects_predicate_answers_at_once_and_leaves_target_errors_to_the_runner():
    state = Failed(data=RateLimited("HTTP 429", status=429, retry_after=30))
    start = time.monotonic()
    assert retry.retry_condition(None, None, state) is False
    assert time.monotonic() - start < 0.05
    assert retry.retry_condition(None, None, Failed(data=LockTimeout("user:1 is held"))) is True
    options = retry.task_options(POLICY)
    assert options["retry_condition_fn"] is retry.retry_condition and options["retries"] == POLICY.attempts - 1


# --- a lost answer is resent only once a read shows the write absent ---------------------------

def _posts(scim, path: str) -> int:
    return sum(1 for method, p in scim.requests if method == "POST" and p.endswith(path))


def test_a_lost_answer_whose_read_fails_is_read_again_after_its_retry_after_and_never_resent():
    # The bulk's answer is lost; each look-up then meets a 429 (Retry-After 2 s) twice before it is served.
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=2, only_methods=("GET",), per_request=True,
                     max_per_request=2, lose_first=1, lose_paths=("/Bulk",))
    with ScimSandbox(unique_user_names=False, faults=plan) as scim:
        connector = get_connector(scim2_config(scim))
        plan.rate = 0.0
        connector.service_provider_config()  # read before the faults start
        plan.rate = 1.0
        ops = [BatchOp("create", account=Account(user_name=f"u{i}", external_id=f"x{i}")) for i in range(3)]
        waits = Waits()
        results, tries = retry.run_batch(connector.apply_batch, ops, POLICY, sleep=waits,
                                         look=lambda items, res, again: unless_applied(connector, items, res, again))
        assert [r.external_id for r in results] == ["x0", "x1", "x2"] and all(r.id for r in results)
        assert _posts(scim, "/Bulk") == 1 and len(scim.users()) == 3  # sent once, found by reading
        assert [tries.count(i) for i in range(3)] == [1, 1, 1]
        assert waits[1:] == [2.0, 2.0]  # each read again waits out the read's own Retry-After
        assert plan.injected == {"lost": 1, "429": 6}


def test_a_lost_answer_the_target_never_lets_us_read_ends_outcome_unknown_unsent():
    from connectors.errors import OutcomeUnknown
    from connectors.outcome import known_not_applied, outcome_unknown

    plan = FaultPlan(rate=1.0, kinds=("5xx",), only_methods=("GET",), lose_first=1, lose_paths=("/Bulk",))
    with ScimSandbox(unique_user_names=False, faults=plan) as scim:
        connector = get_connector(scim2_config(scim))
        plan.rate = 0.0
        connector.service_provider_config()
        plan.rate = 1.0
        ops = [BatchOp("create", account=Account(user_name="u0", external_id="x0"))]
        waits = Waits()
        results, tries = retry.run_batch(connector.apply_batch, ops, POLICY, sleep=waits,
                                         look=lambda items, res, again: unless_applied(connector, items, res, again))
        assert isinstance(results[0], OutcomeUnknown) and outcome_unknown(results[0])
        assert not known_not_applied(results[0])
        assert "could not be read to tell" in str(results[0]) and "HTTP 503" in str(results[0])
        assert _posts(scim, "/Bulk") == 1 and len(scim.users()) == 1 and tries.count(0) == 1
        assert len(waits) == POLICY.attempts and plan.injected == {"lost": 1, "5xx": POLICY.attempts}


def test_a_group_create_whose_answer_is_lost_is_found_after_its_reads_fail_twice():
    from connectors.outcome import group_created

    plan = FaultPlan(rate=1.0, kinds=("5xx",), only_methods=("GET",), per_request=True, max_per_request=2,
                     lose_first=1, lose_paths=("/Groups",))
    with ScimSandbox(faults=plan) as scim:
        connector = get_connector(scim2_config(scim))
        waits = Waits()
        group, tries = retry.run(lambda: connector.create_group("staff", [], external_id="g1"), POLICY, sleep=waits,
                                 look=lambda: group_created(connector, "staff", "g1"))
        assert group.name == "staff" and tries == 1 and _posts(scim, "/Groups") == 1 and len(scim.groups()) == 1
        assert len(waits) == 3


def test_a_write_refused_before_any_work_is_sent_again_without_a_read():
    calls = []

    def call():
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("POST /Users: connection failed (ConnectionError)", maybe_applied=False)
        return "made"

    def look():
        raise AssertionError("a write that was never sent needs no read")

    assert retry.run(call, POLICY, look=look, sleep=Waits()) == ("made", 2)
