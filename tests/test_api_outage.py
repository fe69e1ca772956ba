"""The event API while its state store goes away and comes back: 503 + Retry-After, never a lie.

A throwaway PostgreSQL cluster (sandbox/postgres.py) is stopped for 20 s in the middle of a burst
of POSTs from four senders. Every answer must be 202 (and the event is then in the store) or 503
with Retry-After; the senders then send again what was refused, and the store must hold each
event exactly once.
"""

import json
import threading
import time

import httpx
import pytest
from sqlmodel import func, select

from deployments.api import create_app
from deployments.webhooks import new_secret, sign_headers
from helpers import event
from models.config import parse_config
from models.db import dispose_all, session_scope
from models.tables import Event, User

SECRET = new_secret()
SENDERS, OUTAGE_SECONDS = 4, 20


@pytest.fixture
def cluster(monkeypatch):
    from sandbox.postgres import PostgresCluster

    try:
        pg = PostgresCluster().__enter__()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", pg.url)
    try:
        yield pg
    finally:
        dispose_all()
        pg.__exit__(None, None, None)


class Sender:
    """Posts new events in a loop; remembers each answer and when the request was made."""

    def __init__(self, base: str, n: int):
        self.base, self.n = base, n
        self.answers: list[tuple[dict, int, float, float, str | None]] = []  # event, status, start, end, Retry-After
        self.stop = threading.Event()

    def run(self):
        with httpx.Client(base_url=self.base, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                ev = event(username=f"s{self.n}-u{i}")
                i += 1
                started = time.monotonic()
                r = post(client, ev)
                self.answers.append((ev, r.status_code, started, time.monotonic(), r.headers.get("Retry-After")))
                time.sleep(0.05 if r.status_code == 202 else 0.2)  # backs off, a little faster than told


def post(client: httpx.Client, ev: dict) -> httpx.Response:
    raw = json.dumps(ev).encode()
    return client.post("/v1/events", content=raw, headers={"Content-Type": "application/json",
                                                           **sign_headers(SECRET, raw)})


def test_a_store_outage_in_a_burst_answers_503_and_loses_nothing(cluster, monkeypatch):
    from apiserver import served

    monkeypatch.setenv("OUTAGE_WEBHOOK_SECRET", SECRET)
    config = parse_config({"tenant_domain": "example.com", "api": {"webhook_secrets": ["env:OUTAGE_WEBHOOK_SECRET"]}})
    dispatched: list[str] = []
    app = create_app(config, dispatch=lambda event_id, *_: dispatched.append(event_id))
    with served(app) as (base, log):
        senders = [Sender(base, n) for n in range(SENDERS)]
        threads = [threading.Thread(target=s.run) for s in senders]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            cluster.stop()
            down_from = time.monotonic()
            with httpx.Client(base_url=base, timeout=30) as client:
                time.sleep(1)
                unavailable_get = client.get("/v1/events/evt-x", headers=sign_headers(SECRET, b"/v1/events/evt-x"))
                health, ready = client.get("/healthz"), client.get("/readyz")
            time.sleep(OUTAGE_SECONDS - 1)
            down_until = time.monotonic()
            cluster.start()
            time.sleep(3)
        finally:
            for s in senders:
                s.stop.set()
            for t in threads:
                t.join(timeout=60)

        answers = [a for s in senders for a in s.answers]
        statuses = [a[1] for a in answers]
        assert set(statuses) <= {202, 503}, sorted(set(statuses))
        assert all(retry_after == "5" for _, status, _, _, retry_after in answers if status == 503)
        during = [status for _, status, start, end, _ in answers if start > down_from and end < down_until]
        assert during and set(during) == {503}, "a 202 while the store was down"
        assert unavailable_get.status_code == 503 and unavailable_get.headers["Retry-After"] == "5"
        assert health.status_code == 200 and health.json() == {"status": "ok", "store": "down"}
        assert ready.status_code == 503 and ready.json()["store"] == "down"

        accepted = {ev["id"] for ev, status, *_ in answers if status == 202}
        refused = [ev for ev, status, *_ in answers if status == 503]
        with session_scope() as session:
            stored_now = set(session.exec(select(Event.id)))
        assert accepted <= stored_now, f"{len(accepted - stored_now)} events answered 202 are not in the store"

        # The senders send again what was refused: each is stored (202) or already was (200, duplicate).
        resent: dict[int, int] = {}
        with httpx.Client(base_url=base, timeout=30) as client:
            for ev in refused:
                status = post(client, ev).status_code
                resent[status] = resent.get(status, 0) + 1
        assert set(resent) <= {200, 202}, resent
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
        tracebacks = log.tracebacks()

    everything = {ev["id"] for ev, *_ in answers}
    with session_scope() as session:
        events = session.exec(select(func.count()).select_from(Event)).one()
        ids = set(session.exec(select(Event.id)))
        users = session.exec(select(func.count()).select_from(User)).one()
    assert ids == everything and events == len(everything) and users == len(everything)  # 0 lost, 0 duplicates
    assert len(dispatched) == len(set(dispatched)) == len(everything)
    assert tracebacks == [], tracebacks[:3]
    print(f"\nstore outage: {len(answers)} POSTs in the burst, {len(accepted)} answered 202, {len(refused)} answered 503 "
          f"({len(during)} while the store was down); resent {resent}; stored {events} events, {users} users; "
          f"lost 0, duplicates 0")
