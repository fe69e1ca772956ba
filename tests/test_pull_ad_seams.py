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
