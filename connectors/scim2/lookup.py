"""SCIM batched lookups: a batch's candidate accounts in a few `or` filters instead of a listing.

`userName eq "a" or userName eq "b" or externalId eq "c" …` (RFC 7644 §3.4.2.2), at most
`MAX_TERMS` terms and the server's `filter.maxResults` a request, each answer paged. A filter too
long for a URL goes as POST /Users/.search (§3.4.3); a server that refuses that is asked with GETs
cut to `URL_CAP`. A server that refuses `or` (or filtering on an attribute) is asked one term at a
time, as `find_user` does. What the server answers is narrowed by `connectors.base.matching`, so the
candidates are the ones a listing would give.

userName and emails.value are caseExact=false (RFC 7643 §4.1), so `eq` should ignore case; some
servers compare exactly (SCIMMY's filter uses ===). Whether this one does is asked once per
attribute, with an account it holds in another case; where it compares exactly, the batch's
candidates come from the listing, since no filter can find "Alice" for "alice" there.
"""

import logging
from typing import Iterable, Iterator, Optional
from urllib.parse import quote

from connectors.base import Account, Lookup, matching
from connectors.errors import NotFound, Rejected, TransientError
from connectors.scim2.transport import filter_eq
from connectors.scim2.users import Users

log = logging.getLogger("connectors.scim2")
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
# A GET's filter, URL-encoded, stays under this: request lines over 8 KB are refused by common
# servers and proxies, and the rest of the URL needs room.
URL_CAP = 4000
MAX_TERMS = 100  # eq terms in one filter (servers parse and evaluate each against their accounts)
DEFAULT_MAX_RESULTS = 100  # a page's size when the server does not say its filter.maxResults
CASELESS = ("userName", "emails.value")


class Lookups(Users):
    _search_post: Optional[bool] = None  # whether POST /Users/.search works (None: not tried yet)
    _or_supported: bool = True  # False once the server refused an `or` filter
    _caseless: Optional[dict] = None  # attribute -> whether the server's `eq` ignores case

    def find_users(self, keys: list[Lookup]) -> list[Account]:
        """Every account matching any of `keys` (`connectors.base.matching`): by or-filters in
        ceil(terms / chunk) requests (plus one read per mapped account no filter found), or from
        the listing when the server cannot filter, or compares names exactly."""
        keys = list(keys)
        if not keys:
            return []
        if (self.service_provider_config().get("filter") or {}).get("supported") is False:
            return matching(self.iter_users(), keys)
        terms = _terms(keys)
        found: dict[str, Account] = {}
        for item in self._filtered(terms):
            account = self._from_scim(item)
            found[account.id] = account
        for attribute in sorted({a for a, _ in terms} & set(CASELESS)):
            if not self.compares_caseless(attribute, found.values()):
                return matching(self.iter_users(), keys)
        for key in keys:  # a mapped account no key found (renamed, its externalId changed): by id
            if key.remote_id and key.remote_id not in found:
                try:
                    found[key.remote_id] = self.get_user(key.remote_id)
                except NotFound:
                    pass
        return matching(found.values(), keys)

    # --- the requests ------------------------------------------------------------------------

    def _max_results(self) -> int:
        value = (self.service_provider_config().get("filter") or {}).get("maxResults")
        return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_RESULTS

    def _filtered(self, terms: list[tuple[str, str]]) -> Iterator[dict]:
        """What the server answers to `terms` or-ed, chunk by chunk."""
        size = min(MAX_TERMS, self._max_results())
        for first in range(0, len(terms), size):
            yield from self._chunk(terms[first:first + size])

    def _chunk(self, terms: list[tuple[str, str]]) -> Iterator[dict]:
        if not self._or_supported and len(terms) > 1:
            for term in terms:
                yield from self._chunk([term])
            return
        text = " or ".join(filter_eq(a, v) for a, v in terms)
        long = len(quote(text)) > URL_CAP
        try:
            if long and self._search_post is not False:
                try:
                    yield from self._pages(text, post=True)
                    self._search_post = True
                    return
                except (NotFound, Rejected, TransientError) as exc:
                    if self._search_post or (isinstance(exc, TransientError) and exc.status not in (405, 501)):
                        raise  # it worked before, or the server is failing: not a refusal of .search
                    log.info("connector=%s: POST /Users/.search refused (%s): searches use GET", self.name, exc)
                    self._search_post = False
            if long and len(terms) > 1:  # GET only: halve until the URL is short enough
                half = len(terms) // 2
                yield from self._chunk(terms[:half])
                yield from self._chunk(terms[half:])
                return
            yield from self._pages(text, post=False)
        except Rejected:
            if len(terms) > 1:  # no `or`, or some attribute not filterable: one term at a time
                self._or_supported = False
                log.info("connector=%s: the SCIM server refused an `or` filter: lookups go one term at a time",
                         self.name)
                for term in terms:
                    yield from self._chunk([term])
            elif terms[0][0] == "userName":
                raise
            # a server that cannot filter on externalId or emails finds nothing by them (as find_user)

    def _pages(self, text: str, post: bool) -> Iterator[dict]:
        """Every page of the answer to filter `text` (startIndex/count)."""
        start, count = 1, self._max_results()
        while True:
            if post:
                body = self._json(self._request("POST", "/Users/.search", json_body={
                    "schemas": [SEARCH_REQUEST], "filter": text, "startIndex": start, "count": count}))
            else:
                body = self._json(self._request("GET", "/Users", params={"filter": text, "startIndex": start,
                                                                        "count": count}))
            items = body.get("Resources") or []
            yield from items
            start += len(items)
            if not items or start > int(body.get("totalResults") or 0):
                return

    # --- how the server compares ---------------------------------------------------------------

    def compares_caseless(self, attribute: str, seen: Iterable[Account] = ()) -> bool:
        """Whether the server's `eq` on `attribute` (userName, emails.value) ignores case: asked once
        with an account it holds (one of `seen`, else of its first page) spelt in another case. True
        when it holds none to ask with (nothing can be missed then, or nothing is known)."""
        if self._caseless is None:
            self._caseless = {}
        if attribute not in self._caseless:
            value_of = (lambda a: a.user_name) if attribute == "userName" else (lambda a: a.email)
            sample = _sample(seen, value_of)
            if sample is None:
                sample = _sample((self._from_scim(i) for i in self._search_page(count=10)), value_of)
            if sample is None:
                return True  # asked again next time
            swapped = value_of(sample).swapcase()
            answer = self._search("Users", filter_eq(attribute, swapped), count=10)
            self._caseless[attribute] = any(item.get("id") == sample.id for item in answer)
            if not self._caseless[attribute]:
                log.warning("connector=%s: the SCIM server compares %s exactly in filters (RFC 7643 says without "
                            "case): a batch's accounts are found from the listing of every user", self.name,
                            attribute)
        return self._caseless[attribute]

    def _search_page(self, count: int) -> list[dict]:
        body = self._json(self._request("GET", "/Users", params={"startIndex": 1, "count": count}))
        return body.get("Resources") or []


def _sample(accounts: Iterable[Account], value_of) -> Optional[Account]:
    """An account whose value changes when its case is swapped (a name with letters)."""
    for account in accounts:
        value = value_of(account)
        if value and account.id and value.swapcase() != value:
            return account
    return None


def _terms(keys: list[Lookup]) -> list[tuple[str, str]]:
    """The (attribute, value) eq terms for `keys`, each once (names and emails without case)."""
    seen: set = set()
    terms = []
    for key in keys:
        for attribute, value in (("externalId", key.external_id), ("userName", key.user_name),
                                 ("emails.value", key.email)):
            if not value:
                continue
            mark = (attribute, value if attribute == "externalId" else value.lower())
            if mark not in seen:
                seen.add(mark)
                terms.append((attribute, value))
    return terms
