"""A Salesforce REST API stand-in on https://127.0.0.1:<port>, with its own CA and connected app.

What it enforces, as Salesforce does: OAuth 2.0 tokens (JWT bearer signed with the connected app's
registered certificate key, username-password, client credentials), sessions that expire or are
revoked (401 INVALID_SESSION_ID), the User object's required fields and limits (Username in email
form, at most 80 characters and unique across *all* orgs; Alias at most 8), a ProfileId that
exists, users that cannot be deleted (405), SOQL `query` with paging through `nextRecordsUrl`,
sObject Collections (`composite/sobjects`, at most 200 records, `allOrNone`), and a total API
request limit (403 REQUEST_LIMIT_EXCEEDED; a Collections request counts once). For `outbound check`:
the API versions it offers (`/services/data`; others are 404), `/limits` (DailyApiRequests) and the
User describe (required fields, `required_custom` adds org-specific ones, `custom_fields` optional ones).
Licences, roles, permission sets and frozen logins: see `sandbox.salesforce_access` (`licences`,
`roles`, `permission_sets`, and `profiles` of other licences).

SOQL: see `sandbox.salesforce_soql`. The server, OAuth tokens and query locators are the shared
ones (`sandbox.http`, `sandbox.oauth`, `sandbox.paging`).
"""

import base64
import datetime
import hashlib
import hmac
import itertools
import json
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

from werkzeug.wrappers import Request, Response

from sandbox.faults import FaultPlan
from sandbox.http import HttpSandbox, json_response
from sandbox.oauth import AssertionRefused, Tokens, assertion_claims, rsa_key_pem
from sandbox.paging import QueryLocators
from sandbox.salesforce_access import SCHEMAS as ACCESS_SCHEMAS
from sandbox.salesforce_access import Access
from sandbox.salesforce_access import route as access_route
from sandbox.salesforce_errors import OAuthError, SfError
from sandbox.salesforce_soql import Parser, soql_tokens
from sandbox.tls import make_pki

# The names other code imports from here, whichever module now holds them.
__all__ = ["SalesforceSandbox", "SfError", "OAuthError", "rsa_key_pem", "soql_tokens", "_make_pki"]
_make_pki = make_pki

ACCEPTED_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
MAX_COLLECTION = 200

USER_FIELDS = ("Id", "Username", "LastName", "FirstName", "Name", "Email", "Alias", "CommunityNickname",
               "TimeZoneSidKey", "LocaleSidKey", "EmailEncodingKey", "LanguageLocaleKey", "ProfileId",
               "FederationIdentifier", "IsActive", "UserType", "Department", "Title", "Division",
               "CompanyName", "EmployeeNumber", "Phone", "MobilePhone", "City", "Country", "ManagerId", "UserRoleId",
               "CreatedDate", "LastModifiedDate")
READ_ONLY = {"Id", "Name", "UserType", "CreatedDate", "LastModifiedDate"}
REQUIRED = ("Username", "LastName", "Email", "Alias", "TimeZoneSidKey", "LocaleSidKey", "EmailEncodingKey",
            "LanguageLocaleKey", "ProfileId")
MAX_LENGTH = {"Username": 80, "Email": 128, "Alias": 8, "LastName": 80, "FirstName": 40,
              "CommunityNickname": 40, "FederationIdentifier": 512, "Department": 80, "Title": 80}
PROFILE_FIELDS = ("Id", "Name", "UserType", "UserLicenseId")
API_VERSIONS = tuple(f"{v}.0" for v in range(55, 63))
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SalesforceSandbox(HttpSandbox):
    """Serve a Salesforce org on https://127.0.0.1:<port> from a thread; `stop()` ends it."""

    name = "salesforce-sandbox"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: FaultPlan | None = None,
                 token_ttl: float = 7200.0, query_batch_size: int = 2000, api_limit: int | None = None,
                 client_credentials_enabled: bool = True, api_versions: tuple[str, ...] = API_VERSIONS,
                 daily_api_requests: int = 15000, required_custom: tuple[str, ...] = (),
                 custom_fields: tuple[str, ...] = (), licences: dict[str, int] | None = None,
                 profiles: dict[str, str] | None = None, roles: tuple[str, ...] = (),
                 permission_sets: dict[str, str | None] | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="sf-sandbox-")
        self.ca_file, cert_file, key_file = make_pki(Path(self._dir.name))
        # The connected app: consumer key/secret and the certificate key for the JWT bearer flow.
        self.client_id = "3MVG9" + secrets.token_urlsafe(30).replace("-", "A").replace("_", "B")
        self.client_secret = secrets.token_hex(32)
        self.private_key_pem, self.public_key_pem = rsa_key_pem()
        self.private_key_file = str(Path(self._dir.name) / "connected-app.key")
        Path(self.private_key_file).write_text(self.private_key_pem)
        self.org_id = "00D000000000001AAA"
        self.username = "integration@sandbox.example.com"
        self.password = "Pa55-" + secrets.token_urlsafe(12)
        self.security_token = secrets.token_urlsafe(18)
        self.token_ttl = token_ttl
        self.query_batch_size = query_batch_size
        self.api_limit = api_limit
        self.api_calls = 0
        self.api_versions = api_versions
        self.daily_api_requests = daily_api_requests
        # Custom User fields an org makes required (no default): a create without them is refused.
        self.required_custom = required_custom
        # Custom User fields of the org (Cost_Center__c), optional unless also in required_custom.
        self.custom_fields = tuple(dict.fromkeys((*custom_fields, *required_custom)))
        self.client_credentials_enabled = client_credentials_enabled
        self.refuse_logins = False
        self.taken_elsewhere: set[str] = set()  # usernames held by other orgs (lower case)
        self.token_requests = 0
        # Creates refused because the username was taken here: where nothing refused them, each would
        # be a second account (the lost-answer tests count them).
        self.duplicate_creates = 0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._tokens = Tokens()
        self._cursors = QueryLocators()
        self.profiles: dict[str, dict] = {}
        self.users: dict[str, dict] = {}
        # Licence name -> seats; profile name -> its licence (the three standard ones: "Salesforce").
        licences = {"Salesforce": 1000, "Salesforce Platform": 1000, **(licences or {})}
        self.access = Access(SfError, self.users, self.profiles, licences, list(roles), dict(permission_sets or {}))
        profile_licences = {"Standard User": "Salesforce", "System Administrator": "Salesforce",
                            "Read Only": "Salesforce", **(profiles or {})}
        for name, licence in profile_licences.items():
            pid = self._new_id("00e")
            self.profiles[pid] = {"Id": pid, "Name": name, "UserType": "Standard",
                                  "UserLicenseId": self.access.licence_id(licence)}
        admin = self._profile_id("System Administrator")
        self._integration_user_id = self._insert_user(self._defaults({
            "Username": self.username, "LastName": "Integration", "FirstName": "API", "Email": self.username,
            "Alias": "integ", "ProfileId": admin}))
        self._insert_user(self._defaults({  # a platform user a listing of people must leave out
            "Username": f"autoproc@{self.org_id.lower()}.example.com", "LastName": "Automated Process",
            "Email": "autoproc@example.com", "Alias": "autoproc", "ProfileId": admin}), user_type="AutomatedProcess")
        self._serve(host, port, faults, tls=(cert_file, key_file))

    def stop(self) -> None:
        super().stop()
        self._dir.cleanup()

    # --- knobs for tests ---

    def expire_tokens(self) -> None:
        """Invalidate every issued access token (as a session timeout or an admin's revoke would)."""
        self._tokens.revoke()

    def register_key(self, public_key_pem: str) -> None:
        """Replace the connected app's certificate (the key JWT assertions must be signed with)."""
        self.public_key_pem = public_key_pem

    def find_username(self, username: str) -> dict | None:
        with self._lock:
            return next((u for u in self.users.values() if u["Username"].lower() == username.lower()), None)

    # --- state ---

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):012d}AAA"

    def _profile_id(self, name: str) -> str:
        return next(pid for pid, p in self.profiles.items() if p["Name"] == name)

    def _defaults(self, fields: dict) -> dict:
        base = {"TimeZoneSidKey": "America/Los_Angeles", "LocaleSidKey": "en_US", "EmailEncodingKey": "UTF-8",
                "LanguageLocaleKey": "en_US"}
        return {**base, **fields}

    def _insert_user(self, fields: dict, user_type: str = "Standard") -> str:
        uid = self._new_id("005")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        record = {f: None for f in USER_FIELDS}
        record.update(fields)
        record.update(Id=uid, UserType=user_type, CreatedDate=now, LastModifiedDate=now)
        record.setdefault("IsActive", True)
        if record["IsActive"] is None:
            record["IsActive"] = True
        if not record.get("CommunityNickname"):
            record["CommunityNickname"] = f"{record['Username'].split('@')[0][:30]}{uid[-7:-3]}"
        self._name(record)
        self.users[uid] = record
        self.access.user_created(uid)
        return uid

    @staticmethod
    def _name(record: dict) -> None:
        record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)

    def _validate_user(self, fields: dict, current: dict | None) -> None:
        """Raise SfError as Salesforce would for this insert (current None) or update."""
        for key in fields:
            if key == "attributes":
                continue
            if key not in USER_FIELDS and key not in self.custom_fields:
                raise SfError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type User", [key])
            if key in READ_ONLY:
                raise SfError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {key}. Please check the security settings "
                              "of this field and verify that it is read/write for your profile or permission set.",
                              [key])
        merged = {**(current or {}), **fields}
        missing = [f for f in (*REQUIRED, *self.required_custom) if merged.get(f) in (None, "")]
        if missing:
            raise SfError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        for key, limit in MAX_LENGTH.items():
            value = fields.get(key)
            if isinstance(value, str) and len(value) > limit:
                raise SfError(400, "STRING_TOO_LONG", f"{key}: data value too large: {value[:40]} (max length={limit})",
                              [key])
        if "Username" in fields and not EMAIL.match(str(fields["Username"])):
            raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", "Username: Username must be in the form of an email "
                                                            "address (for example, john@acme.com)", ["Username"])
        if "Email" in fields and not EMAIL.match(str(fields["Email"])):
            raise SfError(400, "INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {fields['Email']}", ["Email"])
        if "ProfileId" in fields and fields["ProfileId"] not in self.profiles:
            raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "Profile ID: id value of incorrect type", ["ProfileId"])
        if "IsActive" in fields and not isinstance(fields["IsActive"], bool):
            raise SfError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of boolean from IsActive", ["IsActive"])
        self.access.check_user(fields, current)
        if "Username" in fields:
            name = str(fields["Username"]).lower()
            clash = self.find_username(name)
            if name in self.taken_elsewhere or (clash and (current is None or clash["Id"] != current["Id"])):
                self.duplicate_creates += current is None and clash is not None
                raise SfError(400, "DUPLICATE_USERNAME",
                              "Duplicate Username.<br>The username already exists in this or another Salesforce "
                              "organization. Usernames must be unique across all Salesforce organizations. To "
                              "resolve, use a unique username (it doesn't need to match the user's email "
                              "address).", ["Username"])

    def _create(self, fields: dict) -> str:
        fields = {k: v for k, v in fields.items() if k != "attributes"}
        self._validate_user(fields, None)
        return self._insert_user(fields)

    def _update(self, uid: str, fields: dict) -> None:
        fields = {k: v for k, v in fields.items() if k not in ("attributes", "id", "Id")}
        current = self.users.get(uid)
        if current is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        self._validate_user(fields, current)
        current.update(fields)
        current["LastModifiedDate"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        self._name(current)

    # --- HTTP ---

    def _answer(self, request: Request) -> Response:
        with self._lock:
            return self._dispatch(request)

    def _crash(self, exc: Exception) -> Response:  # a sandbox bug must look like Salesforce's 500
        return _json([{"message": f"{type(exc).__name__}: {exc}", "errorCode": "UNKNOWN_EXCEPTION"}], 500)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/services/oauth2/token" and request.method == "POST":
            return _json(self._token(request))
        if path.rstrip("/") == "/services/data" and request.method == "GET":  # open to all, as Salesforce's is
            return _json([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in self.api_versions])
        match = re.fullmatch(r"/services/data/v(\d+\.\d)(/.*)?", path)
        if not match or match.group(1) not in self.api_versions:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        self._authenticate(request)
        self.api_calls += 1
        if self.api_limit is not None and self.api_calls > self.api_limit:
            raise SfError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        version, rest = match.group(1), (match.group(2) or "/").rstrip("/")
        response = self._data(request, version, rest)
        if self.api_limit is not None:
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_calls}/{self.api_limit}"
        return response

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else header[6:] if header.startswith("OAuth ") else ""
        if self._tokens.check(token) is None:
            raise SfError(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def _data(self, request: Request, version: str, rest: str) -> Response:
        method = request.method
        if rest in ("/query", "/queryAll") and method == "GET":
            return _json(self._query(request.args.get("q", ""), version))
        if rest.startswith("/query/") and method == "GET":
            return _json(self._page(rest[len("/query/"):], version))
        if rest == "/composite/sobjects" and method in ("POST", "PATCH"):
            return _json(self._collection(method, _body(request)))
        if rest == "/sobjects/User":
            if method == "POST":
                return _json({"id": self._create(_body(request)), "success": True, "errors": []}, 201)
            if method == "GET":
                return _json({"objectDescribe": {"name": "User", "createable": True, "deletable": False}})
        match = re.fullmatch(r"/sobjects/User/([A-Za-z0-9]{15,18})", rest)
        if match:
            uid = match.group(1)
            if method == "GET":
                record = self.users.get(uid)
                if record is None:
                    raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
                wanted = request.args.get("fields")
                fields = [f.strip() for f in wanted.split(",")] if wanted else list(USER_FIELDS)
                return _json(self._record("User", record, fields, version))
            if method == "PATCH":
                self._update(uid, _body(request))
                return Response(status=204)
            if method == "DELETE":
                raise SfError(405, "METHOD_NOT_ALLOWED", "HTTP Method 'DELETE' not allowed. Allowed are GET,HEAD,PATCH")
        routed = access_route(self.access, method, rest, lambda: _body(request))
        if routed is not None:
            status, payload = routed
            return Response(status=204) if payload is None else _json(payload, status)
        if rest == "/limits" and method == "GET":
            cap = self.api_limit if self.api_limit is not None else self.daily_api_requests
            return _json({"DailyApiRequests": {"Max": cap, "Remaining": max(0, cap - self.api_calls)}})
        if rest == "/sobjects/User/describe" and method == "GET":
            return _json(self._describe_user())
        if rest == "/sobjects/Profile" and method == "GET":
            return _json({"objectDescribe": {"name": "Profile"}, "recentItems": []})
        match = re.fullmatch(r"/sobjects/Profile/([A-Za-z0-9]{15,18})", rest)
        if match and method == "GET":
            profile = self.profiles.get(match.group(1))
            if profile is None:
                raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
            return _json(self._record("Profile", profile, list(PROFILE_FIELDS), version))
        if rest == "" and method == "GET":
            return _json({"sobjects": f"/services/data/v{version}/sobjects", "query": f"/services/data/v{version}/query"})
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def _describe_user(self) -> dict:
        """The User object's describe: which fields exist, and which a create must give."""
        fields = [{"name": f, "type": "string", "length": MAX_LENGTH.get(f, 255), "nillable": f not in REQUIRED,
                   "createable": f not in READ_ONLY, "updateable": f not in READ_ONLY, "defaultedOnCreate": False}
                  for f in (*USER_FIELDS, *self.custom_fields)]
        for f in fields:
            if f["name"] in self.required_custom:
                f["nillable"] = False
            if f["name"] == "IsActive":
                f.update(type="boolean", nillable=False, defaultedOnCreate=True)
        return {"name": "User", "createable": True, "deletable": False, "fields": fields}

    @staticmethod
    def _record(entity: str, record: dict, fields: list[str], version: str) -> dict:
        out = {"attributes": {"type": entity, "url": f"/services/data/v{version}/sobjects/{entity}/{record['Id']}"}}
        out.update({f: record.get(f) for f in fields})
        return out

    def _query(self, soql: str, version: str) -> dict:
        entity, fields, where, order, descending, limit = Parser(
            soql, {"User": (*USER_FIELDS, *self.custom_fields), "Profile": PROFILE_FIELDS, **ACCESS_SCHEMAS}).parse()
        table = self._table(entity)
        rows = [r for r in table.values() if where(r)]
        if order:
            rows.sort(key=lambda r: (r.get(order) is None, str(r.get(order) or "").lower()), reverse=descending)
        if limit is not None:
            rows = rows[:limit]
        return self._page(self._cursors.open([r["Id"] for r in rows], (fields, entity)), version)

    def _table(self, entity: str) -> dict:
        return self.users if entity == "User" else self.profiles if entity == "Profile" else self.access.table(entity)

    def _page(self, cursor: str, version: str) -> dict:
        read = self._cursors.read(cursor, self.query_batch_size)
        if read is None:
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        chunk, (fields, entity), total, following = read
        table = self._table(entity)
        records = [self._record(entity, table[i], fields, version) for i in chunk if i in table]
        body = {"totalSize": total, "done": following is None, "records": records}
        if following is not None:
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{following}"
        return body

    def _collection(self, method: str, body) -> list[dict]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records array")
        records = body["records"]
        if len(records) > MAX_COLLECTION:
            raise SfError(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                                                    f"{MAX_COLLECTION} records into this call")
        all_or_none = bool(body.get("allOrNone"))
        snapshot = json.loads(json.dumps(self.users)) if all_or_none else None
        results, failed = [], False
        for record in records:
            kind = (record.get("attributes") or {}).get("type")
            uid = record.get("id") or record.get("Id")
            try:
                if kind != "User":
                    raise SfError(400, "INVALID_TYPE", f"sObject type '{kind}' is not supported by this sandbox")
                if method == "POST":
                    uid = self._create(record)
                else:
                    if not uid:
                        raise SfError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
                    self._update(uid, record)
                results.append({"id": uid, "success": True, "errors": []})
            except SfError as exc:
                failed = True
                item = {"success": False, "errors": [{"statusCode": exc.code, "message": exc.message,
                                                      "fields": exc.fields}]}
                if uid:
                    item["id"] = uid
                results.append(item)
        if all_or_none and failed:
            self.users.clear()
            self.users.update(snapshot)
            rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                      "message": "Record rolled back because not all records were valid and the request was using "
                                 "AllOrNone header", "fields": []}
            results = [r if not r["success"] else {"id": None, "success": False, "errors": [rolled]} for r in results]
        return results

    # --- OAuth ---

    def _issue(self, user_id: str) -> dict:
        token = self._tokens.issue(user_id, self.token_ttl, prefix=f"{self.org_id}!", size=48)
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.url}/id/{self.org_id}/{user_id}"
        signature = base64.b64encode(hmac.new(self.client_secret.encode(), (identity + issued_at).encode(),
                                              hashlib.sha256).digest()).decode()
        return {"access_token": token, "instance_url": self.url, "id": identity, "token_type": "Bearer",
                "issued_at": issued_at, "signature": signature, "scope": "api"}

    def _token(self, request: Request) -> dict:
        self.token_requests += 1
        form = request.form
        grant = form.get("grant_type", "")
        if self.refuse_logins:
            raise OAuthError("invalid_grant", "authentication failure")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._issue(self._jwt_user(form.get("assertion", "")))
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if request.authorization and request.authorization.type == "basic":
            client_id, client_secret = request.authorization.username, request.authorization.password
        if grant not in ("password", "client_credentials"):
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        if client_id != self.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if not client_secret or not hmac.compare_digest(client_secret, self.client_secret):
            raise OAuthError("invalid_client", "invalid client credentials")
        if grant == "client_credentials":
            if not self.client_credentials_enabled:
                raise OAuthError("invalid_grant", "no client credentials user enabled")
            return self._issue(self._integration_user_id)
        user = self.find_username(form.get("username", ""))
        if (user is None or not user["IsActive"]
                or not hmac.compare_digest(form.get("password", ""), self.password + self.security_token)
                or user["Id"] != self._integration_user_id):
            raise OAuthError("invalid_grant", "authentication failure")
        return self._issue(user["Id"])

    def _jwt_user(self, assertion: str) -> str:
        try:
            if assertion_claims(assertion).get("iss") != self.client_id:
                raise OAuthError("invalid_client_id", "client identifier invalid")
            claims = assertion_claims(assertion, self.public_key_pem, [*ACCEPTED_AUDIENCES, self.url],
                                      require=["exp", "iss", "sub", "aud"])
        except AssertionRefused as exc:
            description = {"ExpiredSignatureError": "expired authorization code",
                           "InvalidAudienceError": "audience is invalid"}.get(exc.reason, "invalid assertion")
            raise OAuthError("invalid_grant", description) from None
        user = self.find_username(str(claims.get("sub", "")))
        if user is None or not user["IsActive"]:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return user["Id"]


def _body(request: Request):
    try:
        return json.loads(request.get_data() or b"null")
    except ValueError:
        raise SfError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None


def _json(payload, status: int = 200) -> Response:
    return json_response(payload, status, content_type=SfError.content_type)
