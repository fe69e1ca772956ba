"""SCIM 2.0 probe: an authenticated read, then the discovery endpoints (RFC 7644 §4).

ServiceProviderConfig: patch, bulk (maxOperations, maxPayloadSize), filter (maxResults), etag,
sort, changePassword. ResourceTypes: is there a User and a Group type. Schemas: the enterprise
extension and any custom schema. Only GETs, through a dry-run connector.
"""

from typing import Any, Optional

from connectors.errors import AuthFailed, ConnectorError, NotFound, TransientError
from connectors.probe import Findings, network_problem, tls_of

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
CORE = {"urn:ietf:params:scim:schemas:core:2.0:User", GROUP, ENTERPRISE}


def _auth_fix(cfg) -> str:
    auth = cfg.scim2.auth
    if auth.type == "bearer":
        return f"give scim2.auth.token ({auth.token}) a token this server accepts for connector {cfg.name}"
    if auth.type == "basic":
        return f"check scim2.auth.username ({auth.username}) and the password scim2.auth.password references"
    return (f"check scim2.auth.client_id ({auth.client_id}), the secret scim2.auth.client_secret references, "
            f"and scim2.auth.token_url")


def probe(cfg, found: Findings) -> None:
    from connectors.scim2 import build

    settings = cfg.scim2
    connector = build(cfg, dry_run=True)  # dry-run: nothing mutating can be sent
    caps = found.capabilities
    caps["base_url"] = settings.base_url
    caps["tls"], insecure = tls_of(settings.base_url, settings)
    if insecure:
        found.warn(*insecure)
    caps["auth"] = settings.auth.type
    # One authenticated read: reachability, TLS and credentials at once (discovery may be open to all).
    try:
        connector._request("GET", "/Users", params={"startIndex": 1, "count": 1})
        caps["authenticated"] = True
    except AuthFailed as exc:
        caps["authenticated"], caps["reachable"] = False, True
        found.error(f"credentials refused: {exc}", _auth_fix(cfg))
        return  # what the server offers is only worth knowing once it lets us in
    except TransientError as exc:
        problem = network_problem(exc, f"GET {settings.base_url}/Users", "scim2", settings.timeout)
        caps["reachable"] = problem is None
        if problem:
            found.error(*problem)
            return  # nothing more can be learnt
        found.error(f"GET /Users: {exc}", "the server fails; try again later or ask its operator")
    except NotFound:
        found.error(f"GET {settings.base_url}/Users: 404: no SCIM Users endpoint there",
                    "set scim2.base_url to the SCIM root the /Users endpoint hangs under (often …/scim/v2)")
    except ConnectorError as exc:
        found.error(f"GET /Users: {exc}", "check scim2.base_url points at the SCIM root")
    caps["reachable"] = True
    _service_provider_config(cfg, connector, found)
    _resource_types(cfg, connector, found)
    _schemas(connector, found, cfg)


def _service_provider_config(cfg, connector, found: Findings) -> None:
    caps = found.capabilities
    try:
        spc = connector.service_provider_config()
    except ConnectorError as exc:
        spc = {}
        found.warn(f"GET /ServiceProviderConfig: {exc}", "none needed: PATCH and /Bulk are then not used")
    caps["service_provider_config"] = {k: v for k, v in spc.items() if k not in ("meta", "schemas")}
    if not spc:
        found.warn("the server publishes no ServiceProviderConfig: updates use PUT, one request per operation",
                   "none needed; set scim2.update_method: patch if the server does support PATCH")

    def flag(name: str) -> bool:
        return bool((spc.get(name) or {}).get("supported"))

    bulk = spc.get("bulk") or {}
    caps["patch"], caps["etag"], caps["sort"] = flag("patch"), flag("etag"), flag("sort")
    caps["filter"] = {"supported": flag("filter"), "max_results": (spc.get("filter") or {}).get("maxResults")}
    caps["bulk"] = {"supported": flag("bulk"), "max_operations": bulk.get("maxOperations"),
                    "max_payload_size": bulk.get("maxPayloadSize")}
    if spc and not caps["patch"]:
        if cfg.scim2.update_method == "patch":
            found.error("scim2.update_method is patch, but the server does not support PATCH",
                        "set scim2.update_method: auto (updates then use PUT)")
        else:
            found.warn("the server does not support PATCH: each update reads the user and PUTs it back",
                       "none needed")
    if spc and not caps["filter"]["supported"]:
        found.warn("the server does not support filtering: accounts already there cannot be found by "
                   "userName or externalId, so they cannot be linked",
                   "none in outbound; enable filtering on the server if it can")


def _resource_types(cfg, connector, found: Findings) -> None:
    caps = found.capabilities
    try:
        items = list(connector._iter("ResourceTypes"))
    except ConnectorError as exc:
        caps["resource_types"], caps["group_type"] = None, None
        found.warn(f"GET /ResourceTypes: {exc}: whether the server has groups is unknown",
                   "none needed; group sync is tried as configured")
        return
    types = {str(t.get("name") or t.get("id")): {"endpoint": t.get("endpoint"),
                                                 "extensions": [e.get("schema") for e in t.get("schemaExtensions") or []]}
             for t in items if isinstance(t, dict)}
    caps["resource_types"] = types
    endpoints = {v["endpoint"] for v in types.values()}
    if "User" not in types and "/Users" not in endpoints:
        found.error("the server has no User resource type", "point scim2.base_url at a SCIM server that serves /Users")
    caps["group_type"] = "Group" in types or "/Groups" in endpoints
    if not caps["group_type"] and cfg.groups:
        found.error(f"the server has no Group resource type, but connector {cfg.name} lists groups "
                    f"({', '.join(cfg.groups)}): group sync is off for it",
                    f"remove groups: from connector {cfg.name}, or enable groups on the server")
    elif not caps["group_type"]:
        found.warn("the server has no Group resource type: group sync is off", "none needed (no groups configured)")


def _schemas(connector, found: Findings, cfg=None) -> None:
    caps = found.capabilities
    try:
        schemas = [s for s in connector._iter("Schemas") if isinstance(s, dict) and s.get("id")]
        ids = [s.get("id") for s in schemas]
    except (ConnectorError, ValueError) as exc:
        caps["schemas"] = None
        found.warn(f"GET /Schemas: {exc}", "none needed; only core attributes are sent")
        return
    caps["schemas"] = ids
    caps["enterprise_extension"] = ENTERPRISE in ids
    caps["custom_schemas"] = [s for s in ids if s not in CORE]
    caps["group_name_case_exact"] = group_name_case_exact(next((s for s in schemas if s["id"] == GROUP), None))
    if cfg is not None:
        _mapped_schemas(cfg, {s["id"]: s for s in schemas}, found)


def group_name_case_exact(schema: Optional[dict]) -> bool:
    """Whether the server's Group schema makes displayName caseExact; RFC 7643 §4.2's false when it
    does not say (no Group schema, no displayName, no caseExact)."""
    for attribute in (schema or {}).get("attributes") or []:
        if isinstance(attribute, dict) and str(attribute.get("name", "")).lower() == "displayname":
            return attribute.get("caseExact") is True
    return False


def _mapped_schemas(cfg, schemas: dict[str, dict], found: Findings) -> None:
    """The connector's mapped extension attributes against the server's /Schemas: each schema
    advertised, each attribute in it (names compared without case, as SCIM does)."""
    for target in cfg.attribute_map.extra_targets:
        if not target.startswith("urn:"):
            continue
        urn, _, attribute = target.rpartition(":")
        schema = schemas.get(urn)
        if schema is None:
            extensions = [s for s in schemas if s not in CORE or s == ENTERPRISE]
            found.error(f"attributes: {target} maps to schema {urn}, which the server does not advertise",
                        f"map only schemas the server has ({', '.join(extensions) or 'no extensions'}) "
                        f"in connector {cfg.name}")
            continue
        names = [str(a.get("name")) for a in schema.get("attributes") or [] if isinstance(a, dict)]
        if names and attribute.lower() not in {n.lower() for n in names}:
            found.error(f"attributes: schema {urn} has no attribute {attribute!r}",
                        f"use one of {', '.join(names)} in connector {cfg.name}")


def summary(caps: dict[str, Any]) -> list[str]:
    def yes(value) -> str:
        return "yes" if value else "no"

    lines = [f"{caps.get('base_url')}  TLS: {caps.get('tls')}  auth: {caps.get('auth')} "
             f"({'accepted' if caps.get('authenticated') else 'not accepted'})"]
    if "patch" in caps:
        bulk, flt = caps["bulk"], caps["filter"]
        bulk_text = (f"yes (≤ {bulk['max_operations']} operations, ≤ {bulk['max_payload_size']} bytes)"
                     if bulk["supported"] else "no (one request per operation)")
        lines.append(f"patch {yes(caps['patch'])}; bulk {bulk_text}; filter {yes(flt['supported'])}"
                     + (f" (≤ {flt['max_results']} results)" if flt.get("max_results") else "")
                     + f"; etag {yes(caps['etag'])}; sort {yes(caps['sort'])}")
    if caps.get("resource_types") is not None and "resource_types" in caps:
        lines.append(f"resource types: {', '.join(caps['resource_types']) or 'none'}; "
                     f"groups {yes(caps.get('group_type'))}")
    if caps.get("schemas") is not None and "schemas" in caps:
        lines.append(f"enterprise extension {yes(caps.get('enterprise_extension'))}; custom schemas: "
                     f"{', '.join(caps.get('custom_schemas') or []) or 'none'}; group names compared "
                     f"{'with' if caps.get('group_name_case_exact') else 'without'} case")
    return lines
