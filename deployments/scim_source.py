"""The SCIM 2.0 service provider of `outbound api` (RFC 7643/7644) at /scim/v2: an identity provider
that pushes SCIM (Entra ID, Okta, WSO2's SCIM2 outbound connector, ...) drives provisioning.

    /scim/v2/Users, /Users/{id}           GET (filter, startIndex, count), POST, PUT, PATCH, DELETE
    /scim/v2/Groups, /Groups/{id}         the same; `members` are user ids
    /scim/v2/ServiceProviderConfig, /Schemas, /ResourceTypes

Authentication: `Authorization: Bearer <api.scim_token>` (401 otherwise; the ServiceProviderConfig
is public, as RFC 7643 §5 says). The protocol is scim2-server's; deployments.scim_storage answers
from the identity store and stores each write as outbox events before the answer, then starts
them like any accepted event.

The dialects of the big pushers are accepted as they are sent: Entra ID's capitalised `"op":
"Replace"`, `"active": "False"` as a string and PATCH without `path` carrying `{"name.givenName":
...}` (scim2-models reads them), its members removed by value and its ADSCIM group schema
(`in_rfc_dialect`); Okta's PUT for updates and `active: false` instead of DELETE; WSO2's SCIM2
connector's unquoted `userName Eq john` (`filter_in_rfc_dialect`) and `PRIMARY/john` userNames.

The models, schemas and the provider are built when the router is, and one request of each kind is
served against a throw-away in-memory store then, the generic models it built held: nothing compiles
a pydantic model while requests run in threads.
"""

import asyncio
import gc
import hmac
import json
import logging
import re
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response
from scim2_models import Filter, PayloadTooLargeException, ScimProvider, UnauthorizedException
from scim2_server.applications.wsgi import WSGIApplication
from scim2_server.memory import InMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME
from scim2_server.utils import load_default_resource_types, load_default_schemas, load_default_service_provider_config

from models.availability import STORE_UNAVAILABLE
from models.config import Config
from models.secrets import resolve

from deployments.scim_storage import StoreStorage

log = logging.getLogger("outbound.scim")

PREFIX = "/scim/v2"
MAX_RESULTS = 200
IGNORED_SCHEMAS = ("http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group",)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def build_provider() -> ScimProvider:
    """Users (with the enterprise extension) and Groups; PATCH, filters and ETags; no bulk, sort or passwords."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [BEARER_TOKEN_SCHEME]
    config.patch.supported = True
    config.bulk.supported = False
    config.change_password.supported = False
    config.sort.supported = False
    config.etag.supported = True
    config.filter = Filter(supported=True, max_results=MAX_RESULTS)
    return ScimProvider.from_discovery(load_default_schemas().values(), load_default_resource_types().values(),
                                       config=config)


def _remove_by_value(op) -> list:
    """Entra ID's `{"op": "Remove", "path": "members", "value": [{"value": id}, ...]}` as the RFC says
    it: one remove per member, `members[value eq "id"]`; any other operation as it is."""
    if not (isinstance(op, dict) and str(op.get("op", "")).lower() == "remove" and isinstance(op.get("path"), str)
            and "[" not in op["path"] and isinstance(op.get("value"), list) and op["value"]
            and all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in op["value"])):
        return [op]
    return [{"op": op["op"], "path": f'{op["path"]}[value eq {json.dumps(v["value"])}]'} for v in op["value"]]


# WSO2's SCIM2 outbound connector finds a resource by `userName Eq john` / `displayName Eq sales team`:
# the whole filter one comparison, its value unquoted.
_UNQUOTED = re.compile(r"^\s*(userName|displayName)\s+eq\s+([^\s\"].*?)\s*$", re.IGNORECASE)


def filter_in_rfc_dialect(query: dict) -> dict:
    """The query with WSO2's unquoted `attr Eq value` filter quoted; any other query as it came."""
    match = _UNQUOTED.match(query.get("filter") or "")
    if match is None:
        return query
    return {**query, "filter": f"{match.group(1)} eq {json.dumps(match.group(2))}"}


def in_rfc_dialect(method: str, body: bytes) -> bytes:
    """What the big pushers send that scim2-server's strict reading refuses, said the RFC's way:
    the schema names of IGNORED_SCHEMAS dropped (Entra ID names one in every group it creates: not a
    URN, no attributes), and Entra ID's remove-by-value. Any other body as it came."""
    patching = method == "PATCH" and b"emove" in body
    if not patching and not any(name.encode() in body for name in IGNORED_SCHEMAS):
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body  # scim2-server names the syntax error
    if not isinstance(doc, dict):
        return body
    if isinstance(doc.get("schemas"), list):
        doc["schemas"] = [s for s in doc["schemas"] if s not in IGNORED_SCHEMAS]
    if patching and isinstance(doc.get("Operations"), list):
        doc["Operations"] = [one for op in doc["Operations"] for one in _remove_by_value(op)]
    return json.dumps(doc).encode()


class StoreApplication(WSGIApplication):
    """scim2-server's application over the identity store, with the SCIM bearer token."""

    def __init__(self, storage, provider: ScimProvider, token: Optional[str]):
        super().__init__(storage, provider, ScimService(provider))
        self._token = token.encode() if token else None

    def __repr__(self) -> str:
        return "StoreApplication(<token hidden>)"

    def check_auth(self, request: ScimRequest) -> None:
        auth = request.header("Authorization") or ""
        if self._token is None:
            raise UnauthorizedException(detail="the SCIM endpoint is off: set api.scim_token")
        if auth[:7].lower() != "bearer ":
            raise UnauthorizedException(detail="missing bearer token (Authorization: Bearer <api.scim_token>)")
        if not hmac.compare_digest(auth[7:].strip().encode(), self._token):
            raise UnauthorizedException(detail="bad bearer token")

    def handle_exception(self, request: ScimRequest, exception: Exception) -> ScimResponse:
        if isinstance(exception, STORE_UNAVAILABLE):  # nothing stored (or not known to be): retry later
            log.warning("SCIM %s %s: state store unreachable (%s); answered 503", request.method, request.path,
                        type(exception).__name__)
            return ScimResponse(503, {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "503",
                                      "detail": "the state store is unreachable: send the request again later"},
                                {"Retry-After": "5"})
        return super().handle_exception(request, exception)


_WARMED: list = []  # the generic models the warm-up built, kept alive
WARM_UP = [  # one request of each kind the service parses, so its generic models exist before any thread runs
    ("POST", "/Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "warm",
                        "name": {"givenName": "W"}, "emails": [{"value": "w@example.com", "primary": True}],
                        "roles": [{"value": "r"}], "entitlements": [{"value": "e"}]}),
    ("GET", "/Users?filter=userName eq \"warm\" and (externalId eq \"x\" or emails.value co \"w\")", None),
    ("GET", "/Users?startIndex=1&count=1&attributes=userName", None),
    ("POST", "/Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "warm"}),
    ("GET", "/Groups?filter=displayName eq \"warm\"&excludedAttributes=members", None),
    ("GET", "/ServiceProviderConfig", None), ("GET", "/Schemas", None), ("GET", "/ResourceTypes", None),
]


def _warm_up(provider: ScimProvider) -> None:
    """Serve WARM_UP, with the cyclic collector off until every generic model it built is held."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        _serve_warm_up(provider)
        try:  # held: pydantic caches its generic models weakly, and one collected would be built again mid-request
            from pydantic._internal import _generics

            _WARMED.extend(_generics._GENERIC_TYPES_CACHE.values())
        except (ImportError, AttributeError):
            log.warning("cannot hold pydantic's generic models: a request may build one again")
    finally:
        if enabled:
            gc.enable()


def _serve_warm_up(provider: ScimProvider) -> None:
    app = WSGIApplication(InMemoryStorage(), provider, ScimService(provider))

    def serve(method, path, body=None):
        path, _, query = path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&")) if query else {}
        return app.serve(ScimRequest(method=method, base_url="http://warm/scim/v2", path=path, query=params,
                                     headers=[("Content-Type", "application/scim+json")],
                                     body=json.dumps(body).encode() if body is not None else b""))

    for method, path, body in WARM_UP:
        serve(method, path, body)
    user = next(r for r in app.storage.resources if r.meta.resource_type == "User")
    group = next(r for r in app.storage.resources if r.meta.resource_type == "Group")
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"}, {"op": "replace", "value": {"name.givenName": "x"}},
        {"op": "remove", "path": "emails[value eq \"w@example.com\"]"}, {"op": "add", "path": "title", "value": "t"}]}
    serve("PATCH", f"/Users/{user.id}", patch)
    serve("PATCH", f"/Groups/{group.id}", {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": user.id}]},
        {"op": "remove", "path": f"members[value eq \"{user.id}\"]"}]})
    serve("PUT", f"/Users/{user.id}", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": user.id,
                                       "userName": "warm", "active": False})
    serve("PUT", f"/Groups/{group.id}", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                         "displayName": "warm2", "members": [{"value": user.id}]})
    serve("GET", f"/Users/{user.id}?attributes=userName")
    serve("GET", f"/Groups/{group.id}?excludedAttributes=members")
    serve("GET", "/ResourceTypes/User")
    serve("GET", "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User")
    serve("DELETE", f"/Groups/{group.id}")
    serve("DELETE", f"/Users/{user.id}")


def scim_router(config: Config, dispatcher_of=lambda: None) -> APIRouter:
    """The /scim/v2 routes for `config`; `dispatcher_of()` gives the API's dispatcher for stored events."""
    provider = build_provider()
    _warm_up(provider)
    models = {rt.name: provider.model_for(rt) for rt in provider.resource_types}
    storage = StoreStorage(config, models)
    settings = config.api
    token = resolve(settings.scim_token) if settings is not None and settings.scim_token else None
    application = StoreApplication(storage, provider, token)
    limit = settings.max_body_bytes if settings is not None else 64 * 1024
    router = APIRouter()

    def serve(request: ScimRequest) -> ScimResponse:
        if storage.dispatch is None:
            storage.dispatch = dispatcher_of()
        return application.serve(request)

    @router.api_route(PREFIX + "/{path:path}", methods=METHODS, include_in_schema=False)
    @router.api_route(PREFIX, methods=METHODS, include_in_schema=False)
    async def scim(request: Request, path: str = ""):
        body = in_rfc_dialect(request.method, await request.body())
        scim_request = ScimRequest(
            method=request.method, base_url=str(request.base_url).rstrip("/") + PREFIX, path="/" + path,
            query=filter_in_rfc_dialect(dict(request.query_params)), headers=list(request.headers.items()), body=body)
        if len(body) > limit:
            answer = application.finalize_response(scim_request, application.service.error_response(
                PayloadTooLargeException(detail=f"the body is larger than {limit} bytes (api.max_body_bytes)")))
        else:
            answer = await asyncio.to_thread(serve, scim_request)
        content = b"" if answer.body is None else json.dumps(answer.body).encode()
        return Response(content=content, status_code=int(answer.status), headers=answer.headers)

    return router
