"""Paging for the API sandboxes: Google's page tokens and Salesforce's query locators.

Google (Directory and Licensing APIs): a list takes `maxResults` (1..limit, else 400 naming the
parameter) and an opaque `pageToken`, and answers `nextPageToken` while items remain. Salesforce: a
query's result is kept on the server under a locator and read `size` records at a time through
`nextRecordsUrl`; the locator is forgotten once its last page is read.
"""

import base64
import secrets


def page(items: list, params: dict, limit: int, default: int, error: type) -> tuple[list, str | None]:
    """The page of `items` that `params` ask for, and the token of the next page (None: the last)."""
    raw = params.get("maxResults")
    try:
        size = int(raw) if raw else default
    except ValueError:
        size = -1
    if not 1 <= size <= limit:
        raise error(400, f"Invalid value '{raw}'. Values must be within the range: [1, {limit}]",
                    location="maxResults")
    start = 0
    if params.get("pageToken"):
        try:
            start = int(base64.urlsafe_b64decode(params["pageToken"].encode()).decode().split(":")[1])
        except (ValueError, IndexError, UnicodeDecodeError):
            raise error(400, "Invalid Input: pageToken", location="pageToken") from None
    more = start + size < len(items)
    token = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode() if more else None
    return items[start:start + size], token


class QueryLocators:
    """Server-side query results, each under a locator, read a page at a time."""

    def __init__(self, prefix: str = "01g"):
        self._prefix = prefix
        self._open: dict[str, tuple[list, object]] = {}

    def open(self, ids: list, context) -> str:
        """Keep `ids` (and what the caller needs to render them); return the cursor of the first page."""
        locator = self._prefix + secrets.token_hex(6)
        self._open[locator] = (ids, context)
        return f"{locator}-0"

    def read(self, cursor: str, size: int):
        """(ids of this page, context, total, next cursor or None), or None for an unknown cursor."""
        locator, _, offset = cursor.partition("-")
        if locator not in self._open or not offset.isdigit():
            return None
        ids, context = self._open[locator]
        start = int(offset)
        chunk = ids[start:start + size]
        if start + len(chunk) >= len(ids):
            self._open.pop(locator, None)
            return chunk, context, len(ids), None
        return chunk, context, len(ids), f"{locator}-{start + len(chunk)}"
