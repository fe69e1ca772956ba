"""A real SCIM 2.0 server (scim2-server, in memory) on a free 127.0.0.1 port, with a bearer token.

Variants, each still conformant to RFC 7644, for the interoperability tests:
`bulk=(supported, maxOperations, maxPayloadSize)` as its ServiceProviderConfig advertises (scim2-server
itself answers 413 beyond them, and 501 when /Bulk is not supported); `bulk_ids="post"` echoes a
BulkResponse operation's bulkId only for POSTs (§3.7.3 requires no more); `body_limit` refuses larger
request bodies with 413 whatever the configuration says (a proxy in front of the server);
`group_type=False` serves no Group resource type; `unique_user_names=False` keys accounts on id alone (a
second POST of one userName makes a second account); `unique_group_names=True` makes Group displayName
unique on the server (uniqueness "server" in /Schemas; a second group of a name, in whatever case, is
refused with 409 scimType uniqueness, as servers built on SCIMMY and most directories do);
`group_names_case_exact=True` declares displayName caseExact (then "Eng" and "eng" are two names);
`exact_filters=True` answers `eq` filters comparing exactly whatever the schema says (SCIMMY's
filter); `custom_schemas` adds User extensions; `drop_bulk_answers=n` leaves the last n answers out
of every BulkResponse, `rewrite_bulk_answer(answer)` changes each answer in place. `answered` lists (method, path, status, request body bytes) per request;
`peak_in_flight` is the most requests it ever served at once.
"""

import base64
import hmac
import json
import secrets
import threading
from urllib.parse import parse_qsl

from scim2_models import Schema, SchemaExtension, ScimProvider, Uniqueness
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.utils import (load_default_resource_types, load_default_schemas,
                                load_default_service_provider_config)

from sandbox.faults import FaultPlan
from sandbox.http import HttpSandbox
from sandbox.scim_variants import BodyLimit, BulkAnswers, ExactFilters, IdOnlyStorage


GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def _extension_schema(urn: str) -> Schema:
    return Schema.model_validate({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"], "id": urn, "name": urn.rsplit(":", 2)[-2],
        "attributes": [{"name": "costCenter", "type": "string", "multiValued": False, "required": False,
                        "caseExact": False, "mutability": "readWrite", "returned": "default", "uniqueness": "none"}]})


class ScimSandbox(HttpSandbox):
    """Serve SCIM on http://127.0.0.1:<port>/v2 from a thread; `stop()` ends it."""

    name = "scim-sandbox"

    def __init__(self, token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 patch_supported: bool = True, faults: FaultPlan | None = None,
                 basic_users: dict[str, str] | None = None, oauth_clients: dict[str, str] | None = None,
                 bulk: tuple[bool, int, int] | None = None, bulk_ids: str = "all", body_limit: int | None = None,
                 group_type: bool = True, drop_bulk_answers: int = 0, rewrite_bulk_answer=None,
                 custom_schemas: tuple[str, ...] = (), unique_user_names: bool = True,
                 unique_group_names: bool = False, group_names_case_exact: bool = False,
                 exact_filters: bool = False):
        self.token = token or secrets.token_urlsafe(24)
        # Besides its bearer token, the sandbox can accept HTTP Basic users and OAuth 2.0 clients
        # (client credentials grant at /oauth/token), so every auth mode is tested over real HTTP.
        self.basic_users = basic_users or {}
        self.oauth_clients = oauth_clients or {}
        self.issued_tokens: list[str] = []
        config = load_default_service_provider_config()
        config.authentication_schemes = [BEARER_TOKEN_SCHEME]
        config.patch.supported = patch_supported
        if bulk is not None:
            config.bulk.supported, config.bulk.max_operations, config.bulk.max_payload_size = bulk
        resource_types = load_default_resource_types()
        if not group_type:
            resource_types.pop("Group")
        schemas = load_default_schemas()
        for urn in custom_schemas:  # a User extension with one string attribute, as products add their own
            schemas[urn] = _extension_schema(urn)
            resource_types["User"].schema_extensions.append(
                SchemaExtension(schema_=urn, required=False))
        group_name = next(a for a in schemas[GROUP].attributes if a.name == "displayName")
        if unique_group_names:
            group_name.uniqueness = Uniqueness.server
        if group_names_case_exact:
            group_name.case_exact = True
        provider = ScimProvider.from_discovery(schemas.values(), resource_types.values(), config=config)
        self.storage = InMemoryStorage() if unique_user_names else IdOnlyStorage()
        self.app = BearerTokenApplication(self.storage, provider, service=ScimService(provider, secret=secrets.token_urlsafe(16)),
                                          bearer_tokens=[self.token])
        self.answered: list[tuple[str, str, int, int]] = []
        app = self.app
        if bulk_ids == "post" or drop_bulk_answers or rewrite_bulk_answer:
            app = BulkAnswers(app, post_only_ids=bulk_ids == "post", drop_last=drop_bulk_answers,
                              rewrite=rewrite_bulk_answer)
        if exact_filters:
            app = ExactFilters(app)
        self.in_flight = self.peak_in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._serve(host, port, faults, app=BodyLimit(app, body_limit) if body_limit else app)

    def _front(self, environ, start_response):
        # The token endpoint and Basic users are in front of the faults; what the faults answer is
        # recorded in `answered` like any other answer.
        if environ.get("PATH_INFO") == "/oauth/token":
            return self._token_endpoint(environ, start_response)
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "basic" and self._basic_ok(value, self.basic_users):
            environ["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"
        with self._in_flight_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            def record(status, headers, exc_info=None):
                self.answered.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                                      int(status.split()[0]), int(environ.get("CONTENT_LENGTH") or 0)))
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            return self.faults(environ, record)  # scim2-server answers with its body computed
        finally:
            with self._in_flight_lock:
                self.in_flight -= 1

    @staticmethod
    def _basic_ok(value: str, accounts: dict[str, str]) -> str | None:
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        ok = user in accounts and hmac.compare_digest(accounts[user], password)
        return user if ok else None

    def _token_endpoint(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = dict(parse_qsl(environ["wsgi.input"].read(length).decode()))
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        client = self._basic_ok(value, self.oauth_clients) if scheme.lower() == "basic" else None
        if environ["REQUEST_METHOD"] != "POST" or form.get("grant_type") != "client_credentials" or not client:
            body, status = {"error": "invalid_client"}, "401 Unauthorized"
        else:
            token = secrets.token_urlsafe(24)
            self.issued_tokens.append(token)
            self.app.bearer_tokens.add(token)
            body, status = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}, "200 OK"
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def revoke_tokens(self) -> None:
        """Make every issued OAuth token invalid (the client must fetch a new one)."""
        for token in self.issued_tokens:
            self.app.bearer_tokens.discard(token)

    @property
    def url(self) -> str:
        return super().url + "/v2"

    @property
    def token_url(self) -> str:
        return self.url.removesuffix("/v2") + "/oauth/token"

    def users(self) -> list[dict]:
        """Every user the server holds, as SCIM JSON (for checks and the demo's summary)."""
        return [r.model_dump() for r in self.storage.resources if r.meta and r.meta.resource_type == "User"]

    def groups(self) -> list[dict]:
        return [r.model_dump() for r in self.storage.resources if r.meta and r.meta.resource_type == "Group"]
