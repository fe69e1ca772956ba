"""Active Directory behaviour that OpenLDAP's slapd cannot show, tested at the narrowest seam.

slapd does not do ranged retrieval (it always sends every value of an attribute) and has no
tombstones (no Show Deleted control, no CN=Deleted Objects), so these tests drive the pull's own
functions with a hand-written fake of what an AD domain controller answers, as documented by
Microsoft ([MS-ADTS] 3.1.1.3.1.3.3 "Range Retrieval of Attribute Values" and 3.1.1.5.5
"Tombstone Lifetime" / the LDAP_SERVER_SHOW_DELETED_OID control). The fakes answer exactly the
requests the pull makes; the rest of the pull (paging, mapping, storing, the watermark) is tested
against a real slapd in tests/test_pull_ldap.py.
"""

import pytest

from connectors.ldap import DirectoryError, follow_ranges

GROUP = "CN=All Staff,OU=Groups,DC=corp,DC=example"


class RangedAD:
    """What AD answers for an attribute with more values than MaxValRange (1,500 by default).

    A search asking for `member` gets `member;range=0-1499` (and no plain `member`); a base read
    asking for `member;range=1500-*` gets `member;range=1500-2999`, and the last read gets
    `member;range=<low>-*`. `reads` records every request, to show what the connector asked for.
    """

    def __init__(self, values: list[bytes], max_range: int = 1500):
        self.values, self.max_range, self.reads = values, max_range, []

    def _slice(self, low: int) -> dict[str, list[bytes]]:
        chunk = self.values[low:low + self.max_range]
        last = low + self.max_range >= len(self.values)
        return {f"member;range={low}-{'*' if last else low + len(chunk) - 1}": chunk}

    def first(self) -> dict[str, list[bytes]]:
        """The entry as the subtree search returns it."""
        if len(self.values) <= self.max_range:
            return {"member": list(self.values), "cn": [b"All Staff"]}
        return {"member": [], "cn": [b"All Staff"], **self._slice(0)}

    def read(self, dn: str, attribute: str) -> dict[str, list[bytes]]:
        self.reads.append((dn, attribute))
        name, low = attribute.split(";range=")
        assert name == "member" and low.endswith("-*"), attribute
        return self._slice(int(low[:-2]))


def members(n: int) -> list[bytes]:
    return [f"CN=User {i:05d},OU=Staff,DC=corp,DC=example".encode() for i in range(n)]


def test_a_ranged_attribute_is_read_to_its_end_and_handed_on_under_its_plain_name():
    ad = RangedAD(members(3200))
    raw = follow_ranges(GROUP, ad.first(), ad.read)
    assert raw["member"] == members(3200)  # every value, in the server's order, none twice
    assert raw["cn"] == [b"All Staff"] and not [k for k in raw if ";" in k]
    assert ad.reads == [(GROUP, "member;range=1500-*"), (GROUP, "member;range=3000-*")]


@pytest.mark.parametrize("n", [1500, 1501, 3000])
def test_range_boundaries(n):
    ad = RangedAD(members(n))
    assert follow_ranges(GROUP, ad.first(), ad.read)["member"] == members(n)


def test_an_entry_without_ranges_is_left_as_it_is_and_nothing_more_is_read():
    ad = RangedAD(members(10))
    first = ad.first()
    assert follow_ranges(GROUP, first, ad.read) == first and ad.reads == []


def test_a_last_range_sent_at_once_needs_no_second_read():
    raw = follow_ranges(GROUP, {"member;range=0-*": [b"CN=a"]}, lambda dn, name: pytest.fail("read again"))
    assert raw == {"member": [b"CN=a"]}


@pytest.mark.parametrize("answer, message", [
    ({}, "asked for the values from 1500 on, the server sent no member;range=..."),
    ({"member;range=0-1499": [b"CN=x"]}, "asked for the values from 1500 on, the server sent range 0-1499"),
])
def test_an_answer_that_does_not_continue_the_range_fails_naming_the_entry_and_attribute(answer, message):
    with pytest.raises(DirectoryError) as exc:
        follow_ranges(GROUP, {"member;range=0-1499": members(1500)}, lambda dn, name: answer)
    assert str(exc.value).startswith(f"{GROUP}: member: {message}")


# --- tombstones ---------------------------------------------------------------------------

import re  # noqa: E402
import uuid  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from ldap3.core import exceptions as ldap_errors  # noqa: E402

from connectors.ldap import SHOW_DELETED  # noqa: E402
from models.config import parse_config  # noqa: E402
from models.db import session_scope  # noqa: E402
from models.directory import deleted_objects_container  # noqa: E402
from models.directory_state import watermark  # noqa: E402
from tasks import pull as pull_module  # noqa: E402
from tasks.pull import PullFailed, pull  # noqa: E402

DOMAIN = "DC=corp,DC=example"
STAFF, GROUPS, DELETED = f"OU=Staff,{DOMAIN}", f"OU=Groups,{DOMAIN}", f"CN=Deleted Objects,{DOMAIN}"


class FakeDomainController:
    """The part of an ldap3 Connection to an AD domain controller that the pull uses, holding users,
    groups and tombstones, with AD's rules for what matters here:

    - every change takes the next USN; the rootDSE's highestCommittedUSN is the latest one;
    - a deleted object becomes a tombstone in CN=Deleted Objects (RDN `CN=<name>\\0ADEL:<guid>`),
      keeping objectGUID, isDeleted=TRUE, lastKnownParent and a new uSNChanged, and leaves every
      group's `member` (a linked attribute) in the same change;
    - the container's children are returned only with the Show Deleted control, and an account
      without List Contents on it gets insufficientAccessRights (`deny_tombstones`).
    Filters are not parsed beyond the `(uSNChanged>=N)` the pull adds; `requests` records the
    searches (base, filter, scope, controls) to show what the connector asked for.
    """

    def __init__(self):
        self.usn, self.users, self.groups, self.tombstones = 5000, {}, {}, {}
        self.requests, self.deny_tombstones, self.response = [], False, []
        self.extend = self.standard = self

    def _next(self) -> bytes:
        self.usn += 1
        return str(self.usn).encode()

    def add_user(self, name: str) -> str:
        dn = f"CN={name.title()},{STAFF}"
        self.users[dn] = {"objectGUID": [uuid.uuid4().bytes_le], "sAMAccountName": [name.encode()],
                          "mail": [f"{name}@corp.example".encode()], "userAccountControl": [b"512"],
                          "uSNChanged": [self._next()]}
        return dn

    def add_group(self, name: str, members: list[str]) -> str:
        dn = f"CN={name},{GROUPS}"
        self.groups[dn] = {"member": [m.encode() for m in members], "uSNChanged": [self._next()]}
        return dn

    def delete(self, dn: str) -> str:
        attrs = self.users.pop(dn)
        guid = uuid.UUID(bytes_le=attrs["objectGUID"][0])
        usn = self._next()
        for group in self.groups.values():
            if dn.encode() in group["member"]:
                group["member"].remove(dn.encode())
                group["uSNChanged"] = [usn]
        self.tombstones[f"CN={dn[3:].split(',')[0]}\\0ADEL:{guid},{DELETED}"] = {
            "objectGUID": attrs["objectGUID"], "isDeleted": [b"TRUE"], "uSNChanged": [usn],
            "lastKnownParent": [STAFF.encode()]}
        return str(guid)

    # --- the ldap3 surface ---
    def search(self, base, ldap_filter, scope, attributes=None, **_):
        assert base == "" and attributes == ["highestCommittedUSN"], (base, attributes)  # only the rootDSE
        self.response = [{"type": "searchResEntry", "dn": "", "raw_attributes": {
            "highestCommittedUSN": [str(self.usn).encode()]}}]
        return True

    def paged_search(self, base, ldap_filter, scope, attributes=None, paged_size=None, generator=True,
                     controls=None):
        self.requests.append((base, ldap_filter, scope, controls))
        if base == DELETED:
            if self.deny_tombstones:
                raise ldap_errors.LDAPInsufficientAccessRightsResult(
                    result=50, description="insufficientAccessRights",
                    message="00002098: SecErr: DSID-03150F94, problem 4003 (INSUFF_ACCESS_RIGHTS)")
            shown = [c for c in controls or () if c[0] == SHOW_DELETED]
            entries = self.tombstones if shown else {}
        else:
            entries = self.groups if base == GROUPS else self.users
        since = re.search(r"\(uSNChanged>=(\d+)\)", ldap_filter)
        for dn, attrs in list(entries.items()):
            if since is None or int(attrs["uSNChanged"][0]) >= int(since[1]):
                yield {"type": "searchResEntry", "dn": dn, "raw_attributes": {k: list(v) for k, v in attrs.items()}}


@pytest.fixture
def ad(sqlite_url, monkeypatch):
    dc = FakeDomainController()

    @contextmanager
    def connected(settings):
        yield dc

    monkeypatch.setattr(pull_module, "connected", connected)
    return dc


def ad_config(**changes):
    ldap = {"url": "ldaps://dc1.corp.example", "bind": {"dn": "CN=svc-outbound,OU=Service,DC=corp,DC=example",
                                                       "password": "env:AD_PASSWORD"},
            "base_dn": STAFF, "group_base_dn": GROUPS, "user_filter": "(objectClass=user)", "anchor": "objectGUID",
            "watermark": "uSNChanged", "attributes": {"sAMAccountName": "username", "mail": "email"},
            "roles": {f"CN=Finance,{GROUPS}": ["finance"]}, **changes}
    return parse_config({"tenant_domain": "example.com", "sources": {"ldap": ldap}})


def store() -> dict[str, tuple]:
    from models.identity import load_views

    with session_scope() as session:
        return {v.username: (v.deleted, sorted(v.roles)) for v in load_views(session, "example.com")}


def test_the_deleted_objects_container_is_that_of_the_base_dns_domain():
    assert deleted_objects_container("OU=Staff,DC=corp,DC=example") == "CN=Deleted Objects,DC=corp,DC=example"
    assert deleted_objects_container("ou=people,o=example") is None


def test_an_incremental_pull_on_ad_turns_a_linked_users_tombstone_into_a_delete(ad):
    dns = {name: ad.add_user(name) for name in ("alice", "bob", "carol")}
    ad.add_group("Finance", [dns["alice"], dns["bob"]])
    ad.tombstones[f"CN=Old\\0ADEL:{uuid.uuid4()},{DELETED}"] = {  # deleted long ago: below any watermark
        "objectGUID": [uuid.uuid4().bytes_le], "isDeleted": [b"TRUE"], "uSNChanged": [b"4000"]}
    config = ad_config()
    first = pull(config)
    assert first.full and first.events == {"user.created": 3} and first.tombstones_read is None
    ad.delete(dns["bob"])
    ad.tombstones[f"CN=Printer\\0ADEL:{uuid.uuid4()},{DELETED}"] = {  # never pulled (not a user in scope)
        "objectGUID": [uuid.uuid4().bytes_le], "isDeleted": [b"TRUE"], "uSNChanged": [ad._next()]}
    result = pull(config)
    assert not result.full and result.tombstones_read == 2  # bob's and the printer's: above the watermark
    assert dict(result.events) == {"user.deleted": 1}  # not also a roles_changed for leaving Finance
    assert store() == {"alice": (False, ["finance"]), "bob": (True, ["finance"]), "carol": (False, [])}
    base, ldap_filter, scope, controls = ad.requests[-1]
    assert (base, scope, controls) == (DELETED, "LEVEL", [(SHOW_DELETED, True, None)])
    assert ldap_filter == f"(&(isDeleted=TRUE)(uSNChanged>={int(first.watermark) + 1}))"
    assert pull(config).events == {}  # the next pull reads no tombstone again


def test_tombstones_are_behind_max_deletions(ad):
    dns = [ad.add_user(f"user{i}") for i in range(4)]
    config = ad_config(max_deletions=2)
    pull(config)
    with session_scope() as session:
        mark = watermark(session, "directory")
    for dn in dns[:3]:
        ad.delete(dn)
    with pytest.raises(PullFailed) as exc:
        pull(config)
    assert ("the incremental pull (AD's tombstones) would delete 3 users, more than max_deletions 2; nothing was "
            "stored") in str(exc.value) and "`outbound pull --max-deletions 3`" in str(exc.value)
    with session_scope() as session:
        assert watermark(session, "directory") == mark
    assert not any(deleted for deleted, _ in store().values())
    assert pull(config, max_deletions=3).events == {"user.deleted": 3}


def test_unreadable_tombstones_are_logged_and_the_pull_goes_on(ad):
    dn = ad.add_user("alice")
    ad.add_user("bob")
    config = ad_config()
    pull(config)
    ad.deny_tombstones = True
    ad.delete(dn)
    said = []
    result = pull(config, log=said.append)
    assert result.events == {} and result.tombstones_read is None and result.watermark is not None
    assert said[0].startswith("tombstones not read (CN=Deleted Objects,DC=corp,DC=example: ")
    assert "insufficientAccessRights" in said[0] and "deletes are found by full pulls only" in said[0]
    assert pull(config, full=True).events == {"user.deleted": 1}  # a full pull still finds it by absence


def test_kind_ldap_never_reads_tombstones_and_kind_ad_needs_the_usn_watermark(ad):
    ad.add_user("alice")
    config = ad_config(kind="ldap")
    pull(config)
    pull(config)
    assert not [r for r in ad.requests if r[0] == DELETED]
    with pytest.raises(Exception) as exc:
        ad_config(kind="ad", watermark="modifyTimestamp")
    assert "kind: ad reads tombstones by uSNChanged; set watermark: uSNChanged" in str(exc.value)


def test_a_refused_entry_holds_the_tombstones_deletes_and_the_watermark_until_it_is_fixed(ad):
    dns = [ad.add_user(name) for name in ("alice", "bob")]
    config = ad_config()
    pull(config)
    with session_scope() as session:
        mark = watermark(session, "directory")
    broken = ad.add_user("carol")
    del ad.users[broken]["sAMAccountName"]
    ad.delete(dns[1])
    with pytest.raises(PullFailed) as exc:
        pull(config, log=lambda _: None)
    assert f"{broken}: sAMAccountName: the username attribute is missing or empty" in str(exc.value)
    assert exc.value.result.events == {} and not store()["bob"][0]  # bob's delete waits
    with session_scope() as session:
        assert watermark(session, "directory") == mark
    ad.users[broken]["sAMAccountName"] = [b"carol"]
    ad.users[broken]["uSNChanged"] = [ad._next()]
    assert dict(pull(config).events) == {"user.created": 1, "user.deleted": 1}
