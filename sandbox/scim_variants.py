"""WSGI middlewares that turn scim2-server into other conformant SCIM servers seen in the field."""

import json

from scim2_server.memory import InMemoryStorage


class BulkAnswers:
    """Rewrite BulkResponses: `post_only_ids` echoes a bulkId only when the method is POST (RFC 7644
    §3.7.3 requires no more, and servers that leave it out answer a PATCH with just method, location
    and status); `drop_last` leaves out the last answers (operations that ran, unanswered); `rewrite`
    changes each answer in place (a test's way to send what a broken server would).
    """

    def __init__(self, app, post_only_ids: bool = True, drop_last: int = 0, rewrite=None):
        self.app, self.post_only_ids, self.drop_last, self.rewrite = app, post_only_ids, drop_last, rewrite

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").rstrip("/").endswith("/Bulk") and environ["REQUEST_METHOD"] == "POST":
            return _rewritten(self.app, environ, start_response, self._change)
        return self.app(environ, start_response)

    def _change(self, doc) -> None:
        if not (isinstance(doc, dict) and isinstance(doc.get("Operations"), list)):
            return
        for op in doc["Operations"]:
            if self.post_only_ids and str(op.get("method", "")).upper() != "POST":
                op.pop("bulkId", None)
        if self.rewrite:
            for op in doc["Operations"]:
                self.rewrite(op)
        if self.drop_last:
            doc["Operations"] = doc["Operations"][:-self.drop_last]


def _rewritten(app, environ, start_response, change):
    """`app`'s answer with its JSON body changed in place by `change(doc)` (None when it is not JSON)."""
    captured: dict = {}

    def capture(status, headers, exc_info=None):
        captured.update(status=status, headers=headers)

    body = b"".join(app(environ, capture))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if doc is not None:
        change(doc)
        body = json.dumps(doc).encode()
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))])
    return [body]


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whatever the server advertises (a proxy's cap)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def __call__(self, environ, start_response):
        if int(environ.get("CONTENT_LENGTH") or 0) > self.limit:
            environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))  # read it: an unread body resets the client
            body = json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "413",
                               "detail": f"request body over {self.limit} bytes"}).encode()
            start_response("413 Payload Too Large", [("Content-Type", "application/scim+json"),
                                                     ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)


class IdOnlyStorage(InMemoryStorage):
    """scim2-server's storage without uniqueness: accounts are keyed on `id` alone, as several
    applications do, so two POSTs of the same userName make two accounts (nothing refuses a repeat)."""

    def _values_of(self, resource):
        return {}


class ExactFilters:
    """Answer `attribute eq "value"` filters comparing exactly, whatever caseExact the schema gives the
    attribute: SCIMMY's filter (its Filter.match uses ===) does so, so on a server built with it
    `displayName eq "engineering"` does not find `Engineering`. scim2-server's own (caseless) answer
    is narrowed to the exact matches."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        import re
        from urllib.parse import parse_qs

        wanted = parse_qs(environ.get("QUERY_STRING", "")).get("filter", [""])[0]
        match = re.fullmatch(r'\s*(\w+) eq "((?:[^"\\]|\\.)*)"\s*', wanted)
        if environ["REQUEST_METHOD"] != "GET" or not match:
            return self.app(environ, start_response)
        attribute, value = match.group(1), json.loads(f'"{match.group(2)}"')

        def narrow(doc) -> None:
            if isinstance(doc, dict) and isinstance(doc.get("Resources"), list):
                doc["Resources"] = [r for r in doc["Resources"] if r.get(attribute) == value]
                doc["totalResults"] = len(doc["Resources"])

        return _rewritten(self.app, environ, start_response, narrow)
