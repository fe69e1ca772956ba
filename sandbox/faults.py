"""Fault injection for the sandbox servers: a WSGI middleware every sandbox wraps its app in.

A `FaultPlan` says how often a request fails and how: `5xx` (503), `429` (with Retry-After),
`latency` (added delay, then served), `timeout` (held longer than a client timeout, then 504),
`drop` (the connection ends mid-response), `lost` (the request is served, so its writes apply, and
then the connection ends before the answer: the client cannot tell whether anything happened). The
choice is random per request at `rate`, seeded for repeatability; `only_methods` limits faults to,
say, mutating requests, `only_paths` to paths containing one of the given strings (a batch endpoint).
A kind listed twice is drawn twice as often (`("5xx", "5xx", "429")` at rate 0.15: 10 % 503, 5 % 429).

`lose_first=n` loses the answers to the first n writes whose path contains one of `lose_paths`,
whatever the rate. With `per_request` each draw is seeded by the request itself (method, path,
query, body) and how many identical requests came before it, so the same requests fail however
the client's threads interleave; `max_per_request` then caps how often one identical request fails
(its later repeats are served), which bounds how long any one read or write can be kept failing.
"""

import hashlib
import io
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = ("5xx", "429", "drop")
    latency: float = 0.2
    timeout: float = 5.0
    retry_after: float = 0.05
    only_methods: tuple[str, ...] = ()
    only_paths: tuple[str, ...] = ()
    seed: int | None = None
    lose_first: int = 0
    lose_paths: tuple[str, ...] = ()
    per_request: bool = False
    max_per_request: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    served: int = 0

    def __post_init__(self):
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._seen: Counter = Counter()

    def draw(self, method: str, path: str = "", key: str = "") -> str | None:
        """The fault for this request (None: serve it). `key` is the request's query and body digest."""
        with self._lock:
            self.served += 1
            if self.lose_first > 0 and method in WRITES and any(p in path for p in self.lose_paths):
                self.lose_first -= 1
                return self._count("lost")
            if self.rate <= 0 or (self.only_methods and method not in self.only_methods):
                return None
            if self.only_paths and not any(p in path for p in self.only_paths):
                return None
            chance = self._random
            if self.per_request:
                seen = self._seen[(method, path, key)]
                self._seen[(method, path, key)] += 1
                if self.max_per_request and seen >= self.max_per_request:
                    return None
                chance = random.Random(f"{self.seed}|{method}|{path}|{key}|{seen}")
            if chance.random() >= self.rate:
                return None
            return self._count(chance.choice(self.kinds))

    def _count(self, kind: str) -> str:
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return kind


class FaultInjector:
    """WSGI middleware: serve through `app`, failing some requests as `plan` says."""

    def __init__(self, app, plan: FaultPlan | None = None):
        self.app = app
        self.plan = plan or FaultPlan()

    def __call__(self, environ, start_response):
        key = _request_key(environ) if self.plan.per_request else ""
        kind = self.plan.draw(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), key)
        if kind == "latency":
            time.sleep(self.plan.latency)
        elif kind == "timeout":
            time.sleep(self.plan.timeout)
            return _reply(start_response, "504 Gateway Timeout", b'{"error": "timeout"}')
        elif kind == "5xx":
            return _reply(start_response, "503 Service Unavailable", b'{"error": "injected fault"}')
        elif kind == "429":
            return _reply(start_response, "429 Too Many Requests", b'{"error": "slow down"}',
                          [("Retry-After", str(self.plan.retry_after))])
        elif kind == "drop":
            return _dropped(start_response)
        elif kind == "lost":
            return _served_then_dropped(self.app, environ, start_response)
        return self.app(environ, start_response)


def _request_key(environ) -> str:
    """The query and a digest of the body (read here, then handed on to the app unchanged), without what
    differs between two sendings of the same request: a multipart boundary, a generated password, a
    sign-in's signed timestamp."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    boundary = re.search(r"boundary=([^;\s]+)", environ.get("CONTENT_TYPE", ""))
    same = body.replace(boundary.group(1).encode(), b"") if boundary else body
    same = re.sub(rb'"password": ?"[^"]*"', b"", same)
    if "token" in environ.get("PATH_INFO", ""):
        same = b""
    return f"{environ.get('QUERY_STRING', '')}|{hashlib.sha256(same).hexdigest()[:16]}"


def _reply(start_response, status: str, body: bytes, headers=()):
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def _served_then_dropped(app, environ, start_response):
    """Serve the request in full (its writes apply), throw the answer away, then drop the connection."""
    answer = app(environ, lambda status, headers, exc_info=None: None)
    try:
        b"".join(answer)
    finally:
        if hasattr(answer, "close"):
            answer.close()
    return _dropped(start_response)


def _dropped(start_response):
    # Promise a body, send a little of it, then fail: the server closes the connection mid-response.
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "4096")])

    def body():
        yield b'{"partial":'
        raise ConnectionAbortedError("injected dropped connection")

    return body()
