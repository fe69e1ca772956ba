"""health: quarantine a connector whose target keeps failing, and let it recover by itself.

A circuit breaker kept in the store (`connector_health`), so every worker sees the same state:

    closed ──(quarantine_after consecutive transient failures, or one auth failure)──▶ open
    open   ──(retry_at passes)──▶ exactly one call goes through: the probe (a lease across workers)
    probe answered ──▶ closed, counter reset      probe failed ──▶ open, back-off × factor (capped)

`check(connector)` guards a remote call. While the quarantine is open and not yet due it raises
`Quarantined`, a TransientError whose `retry_after` is the time left, so the one retry policy waits
and tries again without a request reaching the target; a Quarantined is never counted as a failure
of the target. After the call, `record_success` or `record_failure` says how it went. Only calls that
passed `check` in this thread are counted: a failure before the gate (the store, a lock, the
configuration) says nothing about the target. A 429 is neither a failure nor a success (the target
is up but pacing us); an answer such as 404/409/400 is a success (the target is up).
"""

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from connectors.errors import AuthFailed, ConnectorError, RateLimited, TransientError
from models.config import Config, ConnectorConfig
from models import health as store
from models.kinds import HealthState
from models.locks import _owner, release, try_acquire
from models.tables import ConnectorHealth, utcnow

log = logging.getLogger("outbound.health")

PROBE_TTL = 120.0  # a probe that takes longer (or whose worker died) lets another one through
PROBE_WAIT = 10.0  # how long a call waits in-process for a probe in flight before giving up
MAX_ERROR_CHARS = 1000
OPEN = HealthState.OPEN  # bound once: the gate compares it on every call
_MISSING = object()
_local = threading.local()


class Quarantined(TransientError):
    """The connector is quarantined: no request is sent until its back-off has passed."""

    code = "quarantined"
    maybe_applied = False  # refused at the gate: nothing was sent


def _guarded() -> dict[str, Optional[str]]:
    """The connectors this thread's current call passed the gate for, with the probe lease it holds (or None)."""
    guarded = getattr(_local, "guarded", None)
    if guarded is None:
        guarded = _local.guarded = {}
    return guarded


def _probe_name(connector: str) -> str:
    return f"health-probe:{connector}"


def _aware(value: Optional[datetime]) -> Optional[datetime]:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _seconds_until(when: Optional[datetime]) -> float:
    return 0.0 if when is None else max(0.0, (_aware(when) - utcnow()).total_seconds())


def _stamp(value: Optional[datetime]) -> str:
    return "-" if value is None else _aware(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _logger():
    """The Prefect run's logger inside a run (so the quarantine shows in the UI), else ours."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return log


def _flow_run_id() -> Optional[str]:
    try:
        from prefect.runtime import flow_run

        return flow_run.id
    except Exception:
        return None


def get(connector: str) -> Optional[ConnectorHealth]:
    """The connector's health row, or None when it never failed."""
    return store.get(connector)


def all_health() -> dict[str, ConnectorHealth]:
    """Every connector's health row, by name (for `outbound status`)."""
    return store.all_rows()


# The circuit's states in an operator's words: an open circuit is a quarantined connector.
IN_WORDS = {HealthState.CLOSED: "healthy", HealthState.OPEN: "quarantined"}


def describe(h: Optional[ConnectorHealth]) -> str:
    """One line for humans: `healthy`, or `quarantined since …, retry at …, last error …`."""
    if h is None:
        return IN_WORDS[HealthState.CLOSED]
    last = f"last error {h.last_error_code}: {h.last_error}" if h.last_error_code else ""
    failures = f"{h.consecutive_failures} failure{'' if h.consecutive_failures == 1 else 's'} in a row"
    if h.state != OPEN:
        return IN_WORDS[HealthState.CLOSED] + (f" ({failures}; {last})" if h.consecutive_failures else "")
    return (f"quarantined since {_stamp(h.opened_at)}, retry at {_stamp(h.retry_at)} (back-off {h.backoff:g} s), "
            f"{failures}; {last}")


def as_dict(h: Optional[ConnectorHealth]) -> dict:
    """The health row as plain values (for `outbound status --json`), `closed` when there is none."""
    return {"state": h.state if h else HealthState.CLOSED, "consecutive_failures": h.consecutive_failures if h else 0,
            "opened_at": _aware(h.opened_at).isoformat() if h and h.opened_at else None,
            "retry_at": _aware(h.retry_at).isoformat() if h and h.retry_at else None,
            "backoff_seconds": h.backoff if h else 0.0,
            "last_error_code": h.last_error_code if h else None, "last_error": h.last_error if h else None,
            "summary": describe(h)}


def _quarantined(h: ConnectorHealth, retry_after: float, why: str) -> Quarantined:
    return Quarantined(f"connector {h.connector} is quarantined since {_stamp(h.opened_at)} after "
                       f"{h.last_error_code or 'failures'}; {why}", retry_after=retry_after)


def check(connector: str, wait: float = PROBE_WAIT) -> None:
    """Guard a remote call: raise Quarantined while the connector is quarantined; let one probe through when due."""
    guarded = _guarded()
    stale = guarded.pop(connector, None)
    if stale:  # a probe lease left by an earlier call of this thread that never reported back
        release(_probe_name(connector), stale)
    deadline, poll = time.monotonic() + wait, 0.05
    while True:
        h = get(connector)
        if h is None or h.state != OPEN:
            guarded[connector] = None
            return
        left = _seconds_until(h.retry_at)
        if left > 0:
            _logger().warning("connector=%s quarantined: no request sent; next probe at %s (in %.1f s)",
                              connector, _stamp(h.retry_at), left)
            raise _quarantined(h, left, f"next probe at {_stamp(h.retry_at)}")
        owner = _owner()
        if try_acquire(_probe_name(connector), PROBE_TTL, owner) is None:
            h = get(connector)  # a probe that just finished may have closed it or pushed retry_at back
            if h is None or h.state != OPEN or _seconds_until(h.retry_at) > 0:
                release(_probe_name(connector), owner)
                continue
            guarded[connector] = owner
            _logger().warning("connector=%s quarantine due: probing the target (back-off was %g s)",
                              connector, h.backoff)
            return
        if time.monotonic() >= deadline:  # another worker's probe is still in flight
            raise _quarantined(h, max(min(h.backoff, wait), 0.05), "a probe is in flight")
        time.sleep(poll)
        poll = min(poll * 1.5, 1.0)


def _settings(connector: str, config: Config | ConnectorConfig) -> ConnectorConfig:
    return config if isinstance(config, ConnectorConfig) else config.connector(connector)


def _answered(exc: BaseException) -> bool:
    """Whether the target answered (not found, exists, rejected with an HTTP status): it is up."""
    return (isinstance(exc, ConnectorError) and not isinstance(exc, (TransientError, AuthFailed))
            and getattr(exc, "status", None) is not None)


def _counts(exc: BaseException) -> bool:
    """Whether `exc` is a failure of the target. A 429 is not: the target is up and paces us (the
    retry policy honours its Retry-After); nor is our own Quarantined."""
    return isinstance(exc, (TransientError, AuthFailed)) and not isinstance(exc, (Quarantined, RateLimited))


def _close(connector: str) -> None:
    """Reset the counter and close the quarantine; a read first, so the healthy path writes nothing."""
    h = get(connector)
    if h is None or (h.state == HealthState.CLOSED and not h.consecutive_failures):
        return
    store.reset(connector)
    if h.state == OPEN:
        _logger().warning("connector=%s recovered: quarantine closed (was open since %s)", connector,
                          _stamp(h.opened_at))


def _count_failure(connector: str, exc: BaseException, cfg: ConnectorConfig, probe: bool) -> None:
    now, code = utcnow(), getattr(exc, "code", type(exc).__name__)
    # The row is taken for the block (see failure_counted), so two workers never open it twice.
    with store.failure_counted(connector, code, str(exc)[:MAX_ERROR_CHARS], now) as h:
        opened = False
        if h.state == OPEN:
            if probe:  # the probe failed: wait longer before the next one
                h.backoff = cfg.quarantine_backoff.after(h.backoff)
                h.retry_at = now + timedelta(seconds=h.backoff)
            # else: a call that passed the gate before the quarantine opened; it already covers it
        elif isinstance(exc, AuthFailed) or h.consecutive_failures >= cfg.quarantine_after:
            h.state, h.opened_at, opened = OPEN, now, True
            h.backoff = cfg.quarantine_backoff.after(0.0)
            h.retry_at = now + timedelta(seconds=h.backoff)
        failures, backoff, retry_at = h.consecutive_failures, h.backoff, h.retry_at
    if opened or probe:
        _logger().warning("connector=%s quarantined%s after %d failures in a row (%s: %s); next probe at %s (in %g s)",
                          connector, "" if opened else " again: the probe failed", failures, code, exc,
                          _stamp(retry_at), backoff)
    if opened:  # what the quarantine automation of `outbound setup` listens for
        from tasks.history import emit_connector_event

        emit_connector_event(connector, "quarantined", {
            "failures": failures, "error": f"{code}: {str(exc)[:MAX_ERROR_CHARS]}", "retry_at": _stamp(retry_at),
            "check": f"outbound check --connector {connector}"}, _flow_run_id())


def record_success(connector: str) -> None:
    """The guarded call got its answer: reset the counter and close any quarantine."""
    probe = _guarded().pop(connector, _MISSING)
    if probe is _MISSING:
        return
    try:
        _close(connector)
    finally:
        if probe:
            release(_probe_name(connector), probe)


def record_failure(connector: str, exc: BaseException, config: Config | ConnectorConfig) -> None:
    """The guarded call failed: count a transient or auth failure; open (or extend) the quarantine when due."""
    probe = _guarded().pop(connector, _MISSING)
    if probe is _MISSING:
        return
    try:
        if _answered(exc):
            _close(connector)
        elif _counts(exc):
            _count_failure(connector, exc, _settings(connector, config), probe=bool(probe))
        # anything else (the store, a bug, a local check) says nothing about the target
    finally:
        if probe:
            release(_probe_name(connector), probe)


def record_results(connector: str, results: list[Any], config: Config | ConnectorConfig) -> None:
    """After a batch call: healthy if any op got an answer; else one failure (the batch was one call)."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if len(errors) < len(results) or any(_answered(e) for e in errors) or not errors:
        record_success(connector)
    else:
        record_failure(connector, next((e for e in errors if _counts(e)), errors[0]), config)


def refusal(connector: str) -> Optional[Quarantined]:
    """The Quarantined a call would meet now (open, its probe not yet due), or None; a read, no lease taken."""
    h = get(connector)
    if h is None or h.state != OPEN:
        return None
    left = _seconds_until(h.retry_at)
    return _quarantined(h, left, f"next probe at {_stamp(h.retry_at)}") if left > 0 else None


class Guarded:
    """A connector whose remote calls each pass the quarantine gate and report their health.

    It declares the connector protocol (connectors/base.py) method by method rather than forwarding
    whatever is asked, so what goes through the door is exactly the protocol: a call it does not
    declare is an AttributeError here, not an ungated request. `check_user_name` is local (no request).
    With `unit`, its holder gates and reports a whole unit of reads itself (an event batch's plan,
    whose lookups run on several threads): those calls go straight through, so one failed unit counts
    once. A batch call always passes the gate and reports its own health.
    """

    def __init__(self, connector, cfg: ConnectorConfig, unit: bool = False):
        self.inner, self._cfg, self._unit = connector, cfg, unit

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def capabilities(self):  # read each time: a connector learns them (its first answer, a profile)
        return self.inner.capabilities

    def _call(self, method: str, *args, **kwargs):
        if self._unit:  # its holder gated the whole unit (an event batch's plan) and reports it once
            return getattr(self.inner, method)(*args, **kwargs)
        check(self._cfg.name)  # raises Quarantined: the caller's retry policy waits its retry_after
        try:
            result = getattr(self.inner, method)(*args, **kwargs)
        except Exception as exc:
            record_failure(self._cfg.name, exc, self._cfg)
            raise
        record_success(self._cfg.name)
        return result

    def check_user_name(self, user_name: str) -> None:
        self.inner.check_user_name(user_name)

    def create_user(self, account):
        return self._call("create_user", account)

    def get_user(self, remote_id: str):
        return self._call("get_user", remote_id)

    def find_user(self, **keys):
        return self._call("find_user", **keys)

    def find_users(self, keys: list):
        return self._call("find_users", keys)

    def update_user(self, remote_id: str, changes: dict, current):
        return self._call("update_user", remote_id, changes, current)

    def disable_user(self, remote_id: str) -> None:
        return self._call("disable_user", remote_id)

    def enable_user(self, remote_id: str) -> None:
        return self._call("enable_user", remote_id)

    def delete_user(self, remote_id: str) -> None:
        return self._call("delete_user", remote_id)

    def plan_refusal(self, creates: list):
        return self._call("plan_refusal", creates)

    def refuses_repeated_user_names(self) -> bool:  # the optimistic create's probe: two creates, a delete
        return self._call("refuses_repeated_user_names")

    def iter_users(self):
        """The listing, gated once before its first page and reported once after its last."""
        return self._listing("iter_users")

    def iter_groups(self):
        return self._listing("iter_groups")

    def _listing(self, method: str):
        if self._unit:
            yield from getattr(self.inner, method)()
            return
        check(self._cfg.name)
        try:
            yield from getattr(self.inner, method)()
        except Exception as exc:
            record_failure(self._cfg.name, exc, self._cfg)
            raise
        record_success(self._cfg.name)

    def create_group(self, name: str, member_ids: list, external_id=None):
        return self._call("create_group", name, member_ids, external_id=external_id)

    def get_group(self, remote_id: str):
        return self._call("get_group", remote_id)

    def find_group(self, name: str):
        return self._call("find_group", name)

    def add_members(self, group_id: str, member_ids: list) -> None:
        return self._call("add_members", group_id, member_ids)

    def remove_members(self, group_id: str, member_ids: list) -> None:
        return self._call("remove_members", group_id, member_ids)

    def delete_group(self, remote_id: str) -> None:
        return self._call("delete_group", remote_id)

    def apply_batch(self, ops: list, *, max_workers: int = 1) -> list[Any]:
        check(self._cfg.name)
        try:
            results = self.inner.apply_batch(ops, max_workers=max_workers)
        except Exception as exc:
            record_failure(self._cfg.name, exc, self._cfg)
            raise
        record_results(self._cfg.name, results, self._cfg)
        return results


def guarded(connector, cfg: ConnectorConfig, unit: bool = False) -> Guarded:
    """Wrap `connector` so each of its remote calls goes through the quarantine gate (see Guarded)."""
    return Guarded(connector.inner if isinstance(connector, Guarded) else connector, cfg, unit)


__all__ = ["Quarantined", "check", "record_success", "record_failure", "record_results", "guarded", "refusal", "get",
           "all_health", "as_dict", "describe"]
