"""What every section of the configuration is built from: the strict model (an unknown key is a
mistake, not ignored), the name types, and the one rule for which URLs a target may have."""

import ipaddress
from typing import Annotated
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from models.validation import pattern

Name = Annotated[str, Field(pattern=pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                            "1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"))]
StoreName = Annotated[str, Field(pattern=pattern(r"^[A-Za-z0-9_.-]{1,64}$", "1 to 64 of A-Z a-z 0-9 _ . -"))]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool) -> str:
    """Accept https everywhere, http only on loopback unless explicitly allowed."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    if "@" in parsed.netloc:  # credentials in a URL end up in logs: they belong in `auth`, as references
        raise ValueError("must not hold credentials (user:password@); use a secret reference instead")
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.hostname):
        raise ValueError("plain http:// is only accepted for loopback addresses "
                         "(set allow_insecure_http: true to override)")
    return url.rstrip("/")


def _checked(field: str, url: str, allow_insecure_http: bool) -> str:
    """check_url, with the field's name in the message (the error is raised on the whole section)."""
    try:
        return check_url(url, allow_insecure_http)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
