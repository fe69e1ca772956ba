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

SOQL is parsed just enough for what a provisioning connector sends: `SELECT f, ... FROM User|Profile
[WHERE cond] [ORDER BY f [ASC|DESC]] [LIMIT n]`, where cond combines `f = | != | LIKE value`,
`f [NOT] IN (values)` with AND/OR/NOT and parentheses, and string literals honour SOQL's escapes.
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

import jwt
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sandbox.faults import FaultInjector, FaultPlan
from sandbox.salesforce_access import SCHEMAS as ACCESS_SCHEMAS
from sandbox.salesforce_access import Access
from sandbox.salesforce_access import route as access_route

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


class _QuietHandler(WSGIRequestHandler):
    def log(self, *args, **kwargs):  # the sandbox is not the thing being debugged
        pass


class SfError(Exception):
    """A Salesforce error answer: HTTP status and [{"message", "errorCode", "fields"}]."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []

    def body(self) -> list[dict]:
        item = {"message": self.message, "errorCode": self.code}
        if self.fields:
            item["fields"] = self.fields
        return [item]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


# --- certificates ---------------------------------------------------------------------------

def _make_pki(directory: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it; returns the PEM paths."""
    from ipaddress import ip_address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outbound sandbox CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(ca_file), str(cert_file), str(key_file)


def rsa_key_pem() -> tuple[str, str]:
    """A fresh RSA key pair (private PEM, public PEM), as a connected app's certificate holds."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


# --- SOQL -----------------------------------------------------------------------------------

_LIKE_UNDERSCORE, _LIKE_PERCENT = "\ue000", "\ue001"  # \_ and \% inside a literal
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\",
            "_": _LIKE_UNDERSCORE, "%": _LIKE_PERCENT}
_TOKEN = re.compile(r"\s*(?:(?P<op>!=|<>|<=|>=|[=<>(),])|(?P<num>\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<quote>'))")


def malformed(message: str) -> SfError:
    return SfError(400, "MALFORMED_QUERY", message)


def soql_tokens(text: str) -> list[tuple[str, object]]:
    """Split SOQL into (kind, value) tokens; string literals are un-escaped."""
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return tokens
        match = _TOKEN.match(text, pos)
        if not match:
            raise malformed(f"unexpected token at position {pos}: {text[pos:pos + 20]!r}")
        pos = match.end()
        if match.group("op"):
            tokens.append(("op", match.group("op")))
        elif match.group("num"):
            tokens.append(("num", float(match.group("num"))))
        elif match.group("word"):
            tokens.append(("word", match.group("word")))
        else:
            out = []
            while True:
                if pos >= len(text):
                    raise malformed("unterminated string literal")
                ch = text[pos]
                if ch == "'":
                    pos += 1
                    break
                if ch == "\\":
                    nxt = text[pos + 1:pos + 2]
                    if nxt.lower() == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[pos + 2:pos + 6]):
                        out.append(chr(int(text[pos + 2:pos + 6], 16)))
                        pos += 6
                        continue
                    key = nxt if nxt in ('"', "'", "\\", "_", "%") else nxt.lower()
                    if key not in _ESCAPES:
                        raise malformed(f"invalid escape sequence \\{nxt} in a string literal")
                    out.append(_ESCAPES[key])
                    pos += 2
                    continue
                out.append(ch)
                pos += 1
            tokens.append(("str", "".join(out)))


class _Parser:
    def __init__(self, text: str, schemas: dict[str, tuple[str, ...]]):
        self.tokens = soql_tokens(text)
        self.i = 0
        self.schemas = schemas

    def peek_word(self) -> str:
        kind, value = self.tokens[self.i] if self.i < len(self.tokens) else ("end", None)
        return value.upper() if kind == "word" else ""

    def take(self, kind: str | None = None, value: str | None = None):
        if self.i >= len(self.tokens):
            raise malformed("unexpected end of query")
        tok = self.tokens[self.i]
        if (kind and tok[0] != kind) or (value and str(tok[1]).upper() != value):
            raise malformed(f"unexpected token: {tok[1]!r}" + (f" (expected {value})" if value else ""))
        self.i += 1
        return tok[1]

    def field(self, name: str) -> str:
        for f in self.schemas[self.entity]:
            if f.lower() == name.lower():
                return f
        raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{self.entity}'. If you are "
                                            "attempting to use a custom field, be sure to append the '__c' "
                                            "after the custom field name.")

    def parse(self):
        self.take("word", "SELECT")
        names = [self.take("word")]
        while self.i < len(self.tokens) and self.tokens[self.i] == ("op", ","):
            self.i += 1
            names.append(self.take("word"))
        self.take("word", "FROM")
        entity = self.take("word")
        self.entity = next((e for e in self.schemas if e.lower() == entity.lower()), None)
        if self.entity is None:
            raise SfError(400, "INVALID_TYPE", f"sObject type '{entity}' is not supported.")
        fields = [self.field(n) for n in names]
        where = lambda record: True  # noqa: E731
        order, descending, limit = None, False, None
        if self.peek_word() == "WHERE":
            self.i += 1
            where = self.expr()
        if self.peek_word() == "ORDER":
            self.i += 1
            self.take("word", "BY")
            order = self.field(self.take("word"))
            if self.peek_word() in ("ASC", "DESC"):
                descending = self.take("word").upper() == "DESC"
        if self.peek_word() == "LIMIT":
            self.i += 1
            limit = int(self.take("num"))
        if self.i != len(self.tokens):
            raise malformed(f"unexpected token: {self.tokens[self.i][1]!r}")
        return self.entity, fields, where, order, descending, limit

    def expr(self):
        left = self.term()
        while self.peek_word() == "OR":
            self.i += 1
            right = self.term()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def term(self):
        left = self.factor()
        while self.peek_word() == "AND":
            self.i += 1
            right = self.factor()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def factor(self):
        if self.peek_word() == "NOT":
            self.i += 1
            inner = self.factor()
            return lambda r: not inner(r)
        if self.i < len(self.tokens) and self.tokens[self.i] == ("op", "("):
            self.i += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        name = self.field(self.take("word"))
        word = self.peek_word()
        if word in ("IN", "NOT"):
            negate = word == "NOT"
            self.i += 1
            if negate:
                self.take("word", "IN")
            self.take("op", "(")
            values = [self.value()]
            while self.i < len(self.tokens) and self.tokens[self.i] == ("op", ","):
                self.i += 1
                values.append(self.value())
            self.take("op", ")")
            return lambda r: any(_equal(r.get(name), v) for v in values) != negate
        if word == "LIKE":
            self.i += 1
            pattern = _like_regex(self.take("str"))
            return lambda r: isinstance(r.get(name), str) and bool(pattern.fullmatch(r[name]))
        op = self.take("op")
        value = self.value()
        if op == "=":
            return lambda r: _equal(r.get(name), value)
        if op in ("!=", "<>"):
            return lambda r: not _equal(r.get(name), value)
        raise malformed(f"operator {op} is not supported by this sandbox")

    def value(self):
        if self.i >= len(self.tokens):
            raise malformed("unexpected end of query")
        kind, value = self.tokens[self.i]
        self.i += 1
        if kind == "str":
            return value.replace(_LIKE_UNDERSCORE, "_").replace(_LIKE_PERCENT, "%")
        if kind == "num":
            return value
        if kind == "word" and value.upper() in ("TRUE", "FALSE", "NULL"):
            return {"TRUE": True, "FALSE": False, "NULL": None}[value.upper()]
        raise malformed(f"unexpected value: {value!r}")


def _equal(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()  # SOQL text comparison is case-insensitive
    return a == b


def _like_regex(pattern: str) -> re.Pattern:
    out = []
    for ch in pattern:
        out.append({"%": ".*", "_": ".", _LIKE_PERCENT: "%", _LIKE_UNDERSCORE: "_"}.get(ch) or re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


# --- the server -----------------------------------------------------------------------------

class SalesforceSandbox:
    """Serve a Salesforce org on https://127.0.0.1:<port> from a thread; `stop()` ends it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: FaultPlan | None = None,
                 token_ttl: float = 7200.0, query_batch_size: int = 2000, api_limit: int | None = None,
                 client_credentials_enabled: bool = True, api_versions: tuple[str, ...] = API_VERSIONS,
                 daily_api_requests: int = 15000, required_custom: tuple[str, ...] = (),
                 custom_fields: tuple[str, ...] = (), licences: dict[str, int] | None = None,
                 profiles: dict[str, str] | None = None, roles: tuple[str, ...] = (),
                 permission_sets: dict[str, str | None] | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="sf-sandbox-")
        self.ca_file, cert_file, key_file = _make_pki(Path(self._dir.name))
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
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[float, str]] = {}
        self._cursors: dict[str, tuple[list[str], list[str], str]] = {}
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
        self.faults = FaultInjector(self._app, faults)
        self._server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler,
                                   ssl_context=(cert_file, key_file))
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"https://{host}:{port}"

    def start(self) -> "SalesforceSandbox":
        self._thread = threading.Thread(target=self._server.serve_forever, name="salesforce-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._dir.cleanup()

    def __enter__(self) -> "SalesforceSandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- knobs for tests ---

    def expire_tokens(self) -> None:
        """Invalidate every issued access token (as a session timeout or an admin's revoke would)."""
        with self._lock:
            self._tokens.clear()

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

    def _wsgi(self, environ, start_response):
        self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return self.faults(environ, start_response)

    def _app(self, environ, start_response):
        request = Request(environ)
        try:
            with self._lock:
                response = self._dispatch(request)
        except OAuthError as exc:
            response = _json({"error": exc.error, "error_description": exc.description}, exc.status)
        except SfError as exc:
            response = _json(exc.body(), exc.status)
        except Exception as exc:  # a sandbox bug must look like Salesforce's 500, not hang the client
            response = _json([{"message": f"{type(exc).__name__}: {exc}", "errorCode": "UNKNOWN_EXCEPTION"}], 500)
        return response(environ, start_response)

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
        entry = self._tokens.get(token)
        if entry is None or time.monotonic() - entry[0] > self.token_ttl:
            self._tokens.pop(token, None)
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
        entity, fields, where, order, descending, limit = _Parser(
            soql, {"User": (*USER_FIELDS, *self.custom_fields), "Profile": PROFILE_FIELDS, **ACCESS_SCHEMAS}).parse()
        table = self._table(entity)
        rows = [r for r in table.values() if where(r)]
        if order:
            rows.sort(key=lambda r: (r.get(order) is None, str(r.get(order) or "").lower()), reverse=descending)
        if limit is not None:
            rows = rows[:limit]
        ids = [r["Id"] for r in rows]
        locator = "01g" + secrets.token_hex(6)
        self._cursors[locator] = (ids, fields, entity)
        return self._page(f"{locator}-0", version)

    def _table(self, entity: str) -> dict:
        return self.users if entity == "User" else self.profiles if entity == "Profile" else self.access.table(entity)

    def _page(self, cursor: str, version: str) -> dict:
        locator, _, offset = cursor.partition("-")
        if locator not in self._cursors or not offset.isdigit():
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        ids, fields, entity = self._cursors[locator]
        table = self._table(entity)
        start = int(offset)
        chunk = ids[start:start + self.query_batch_size]
        records = [self._record(entity, table[i], fields, version) for i in chunk if i in table]
        done = start + len(chunk) >= len(ids)
        body = {"totalSize": len(ids), "done": done, "records": records}
        if done:
            self._cursors.pop(locator, None)
        else:
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{start + len(chunk)}"
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
        token = f"{self.org_id}!" + secrets.token_urlsafe(48)
        self._tokens[token] = (time.monotonic(), user_id)
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
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        if unverified.get("iss") != self.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        try:
            claims = jwt.decode(assertion, self.public_key_pem, algorithms=["RS256"],
                                audience=[*ACCEPTED_AUDIENCES, self.url], options={"require": ["exp", "iss", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise OAuthError("invalid_grant", "expired authorization code") from None
        except jwt.InvalidAudienceError:
            raise OAuthError("invalid_grant", "audience is invalid") from None
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
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
    return Response(json.dumps(payload), status=status, content_type="application/json;charset=UTF-8")
