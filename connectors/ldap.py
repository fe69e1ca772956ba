"""Read an LDAP directory or Active Directory (ldap3): bind, paged searches (RFC 2696), the rootDSE.

Every failure becomes a DirectoryError whose message says what to fix (the URL, the bind DN, the
filter) and never holds the password. Searches are always paged: a server's size limit (AD: 1,000)
never cuts a pull short silently. An attribute Active Directory sends in ranges (a group's `member`
beyond MaxValRange, 1,500 values: `member;range=0-1499`) is read to its end (`range=N-*`) and handed
on under its plain name, so callers never see a range.
"""

import math
import re
import ssl
from contextlib import contextmanager
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

import ldap3
from ldap3.core import exceptions as ldap_errors

from models.config import LdapSourceSettings
from models.errors import ProvisioningError
from models.secrets import resolve


class DirectoryError(ProvisioningError):
    """The directory cannot be read: the pull stops, nothing of it stored, the watermark kept."""

    code = "directory"


def _server(settings: LdapSourceSettings) -> ldap3.Server:
    url = urlparse(settings.url)
    secure = url.scheme == "ldaps" or settings.start_tls
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file,
                    version=ssl.PROTOCOL_TLS_CLIENT) if secure else None
    return ldap3.Server(url.hostname, port=url.port or (636 if url.scheme == "ldaps" else 389),
                        use_ssl=url.scheme == "ldaps", tls=tls, get_info=ldap3.NONE,
                        connect_timeout=math.ceil(settings.timeout))


@contextmanager
def connected(settings: LdapSourceSettings) -> Iterator[ldap3.Connection]:
    """A bound, read-only connection; DirectoryError naming the URL or the bind DN when it cannot be had."""
    password = resolve(settings.bind.password)
    # auto_range off: ranges are followed by follow_ranges (ldap3 2.9's own can lose values or raise
    # IndexError, cannatag/ldap3#336 and #986, and cannot say which entry failed).
    conn = ldap3.Connection(_server(settings), user=settings.bind.dn, password=password, read_only=True,
                            raise_exceptions=True, receive_timeout=math.ceil(settings.timeout),
                            auto_bind=ldap3.AUTO_BIND_NONE, auto_range=False)
    try:
        try:
            conn.open()
            if settings.start_tls:
                conn.start_tls()
        except (ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPSocketReceiveError,
                ldap_errors.LDAPStartTLSError, ldap_errors.LDAPSSLConfigurationError, OSError) as exc:
            raise DirectoryError(f"url {settings.url}: cannot connect ({_reason(exc)})") from None
        try:
            conn.bind()
        except ldap_errors.LDAPInvalidCredentialsResult:
            raise DirectoryError(f"bind.dn {settings.bind.dn}: the directory refused the credentials "
                                 f"(invalidCredentials); check the DN and bind.password's secret") from None
        except ldap_errors.LDAPException as exc:
            raise DirectoryError(f"bind.dn {settings.bind.dn}: the bind failed ({_reason(exc)})") from None
        yield conn
    finally:
        try:
            conn.unbind()
        except Exception:  # the socket may be gone already; there is nothing to release then
            pass


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


def search(conn: ldap3.Connection, base: str, ldap_filter: str, attributes: list[str], page_size: int,
           setting: str) -> Iterator[tuple[str, dict]]:
    """(DN, raw attributes) of every entry, page by page; `setting` names the filter in errors."""
    try:
        for entry in conn.extend.standard.paged_search(base, ldap_filter, ldap3.SUBTREE, attributes=attributes,
                                                       paged_size=page_size, generator=True):
            if entry.get("type") == "searchResEntry":
                raw = entry["raw_attributes"]
                if any(";range=" in name.lower() for name in raw):
                    # The paged search has already taken this page's response and cookie: another
                    # search on the connection now cannot disturb it.
                    raw = follow_ranges(entry["dn"], raw, lambda dn, name: _read_one(conn, dn, name))
                yield entry["dn"], raw
    except ldap_errors.LDAPInvalidFilterError as exc:
        raise DirectoryError(f"{setting} {ldap_filter!r}: not a valid LDAP filter ({_reason(exc)})") from None
    except (ldap_errors.LDAPAdminLimitExceededResult, ldap_errors.LDAPSizeLimitExceededResult) as exc:
        raise DirectoryError(f"page_size {page_size}: the server refuses it for this bind account "
                             f"({_reason(exc)}); lower page_size to its limit (AD: MaxPageSize, 1000)") from None
    except ldap_errors.LDAPNoSuchObjectResult:
        raise DirectoryError(f"base DN {base!r}: no such entry in the directory") from None
    except (ldap_errors.LDAPSocketReceiveError, ldap_errors.LDAPSessionTerminatedByServerError,
            ldap_errors.LDAPSocketSendError) as exc:
        raise DirectoryError(f"the connection to the directory broke during the search ({_reason(exc)})") from None
    except ldap_errors.LDAPException as exc:
        raise DirectoryError(f"the search of {base!r} with {setting} {ldap_filter!r} failed ({_reason(exc)})") from None


def highest_committed_usn(conn: ldap3.Connection) -> Optional[int]:
    """Active Directory's rootDSE highestCommittedUSN, read before a uSNChanged search begins."""
    try:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["highestCommittedUSN"])
    except ldap_errors.LDAPException as exc:
        raise DirectoryError(f"cannot read the rootDSE's highestCommittedUSN ({_reason(exc)})") from None
    values = conn.response[0]["raw_attributes"].get("highestCommittedUSN") if conn.response else None
    if not values:
        raise DirectoryError("watermark uSNChanged: the rootDSE has no highestCommittedUSN (not Active Directory?)")
    return int(values[0])


_RANGE = re.compile(r"^(?P<name>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.IGNORECASE)
MAX_RANGE_STEPS = 10_000  # 15 million values at AD's 1,500 a step: beyond it, the server is not progressing


def follow_ranges(dn: str, raw: dict[str, list[bytes]],
                  read: Callable[[str, str], dict[str, list[bytes]]]) -> dict[str, list[bytes]]:
    """`raw` with every ranged attribute (`member;range=0-1499`) read to its end and stored under its
    plain name (`member`). `read(dn, "member;range=1500-*")` is one base-scope read of the entry
    asking for that attribute; the server answers with the range it sent (`member;range=1500-2999`,
    or `member;range=1500-*` for the last one). DirectoryError naming the DN and attribute when the
    server's answer does not continue where the last range ended."""
    out = {name: values for name, values in raw.items() if not _RANGE.match(name)}
    for name in raw:
        match = _RANGE.match(name)
        if match is None:
            continue
        plain = match["name"]
        values = list(raw[name])
        high, steps = match["high"], 0
        while high != "*":
            start = int(high) + 1
            steps += 1
            if steps > MAX_RANGE_STEPS:
                raise DirectoryError(f"{dn}: {plain}: the server sent more than {MAX_RANGE_STEPS} ranges")
            answer = read(dn, f"{plain};range={start}-*")
            found = [(m, v) for m, v in ((_RANGE.match(k), v) for k, v in answer.items())
                     if m is not None and m["name"].lower() == plain.lower()]
            if not found:
                raise DirectoryError(f"{dn}: {plain}: asked for the values from {start} on, the server sent no "
                                     f"{plain};range=... (the entry changed during the read?)")
            got, more = found[0]
            if int(got["low"]) != start or (got["high"] != "*" and int(got["high"]) < start):
                raise DirectoryError(f"{dn}: {plain}: asked for the values from {start} on, the server sent "
                                     f"range {got['low']}-{got['high']}")
            values += more
            high = got["high"]
        out[plain] = out.get(plain, []) + values
    return out


def _read_one(conn: ldap3.Connection, dn: str, attribute: str) -> dict[str, list[bytes]]:
    """One entry's raw attributes, asking only for `attribute` (a base-scope search)."""
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
    except ldap_errors.LDAPException as exc:
        raise DirectoryError(f"{dn}: reading {attribute} failed ({_reason(exc)})") from None
    entries = [e for e in conn.response or () if e.get("type") == "searchResEntry"]
    return entries[0]["raw_attributes"] if entries else {}


SHOW_DELETED = "1.2.840.113556.1.4.417"  # LDAP_SERVER_SHOW_DELETED_OID: tombstones are returned too


def deleted_objects(conn: ldap3.Connection, container: str, since_usn: int, anchor: str,
                    page_size: int) -> tuple[Optional[list[tuple[str, dict]]], Optional[str]]:
    """AD's tombstones changed after `since_usn`: ([(DN, raw attributes)], None), or (None, why) when
    the bind account may not read the Deleted Objects container (the pull then goes on without them:
    full pulls still find the deletes by absence)."""
    ldap_filter = f"(&(isDeleted=TRUE)(uSNChanged>={since_usn + 1}))"
    found = []
    try:
        for entry in conn.extend.standard.paged_search(container, ldap_filter, ldap3.LEVEL,
                                                       attributes=[anchor, "isDeleted", "uSNChanged", "lastKnownParent"],
                                                       controls=[(SHOW_DELETED, True, None)], paged_size=page_size,
                                                       generator=True):
            if entry.get("type") == "searchResEntry":
                found.append((entry["dn"], entry["raw_attributes"]))
    except (ldap_errors.LDAPInsufficientAccessRightsResult, ldap_errors.LDAPNoSuchObjectResult,
            ldap_errors.LDAPUnavailableCriticalExtensionResult) as exc:
        return None, f"{container}: {_reason(exc)}"
    except ldap_errors.LDAPException as exc:
        raise DirectoryError(f"reading the tombstones in {container!r} failed ({_reason(exc)})") from None
    return found, None
