"""Turn pydantic's errors into one message an operator can act on: each bad field by its path."""

from pydantic import ValidationError

from models.errors import InvalidInput


def escaped(key: str) -> str:
    """A key as it can be printed: backslashes, control characters, surrogates and the like as escapes."""
    if key.isprintable() and "\\" not in key:
        return key
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in key)


def field_path(loc: tuple) -> str:
    """`("user", "roles", 0)` → `user.roles[0]`; keys that cannot be printed are escaped (`user.\\x00`)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = escaped(str(part))
            out += f".{part}" if out else part
    return out or "(root)"


# Fields that hold secrets (or references to them): their values are never echoed back.
SECRET_FIELDS = {"token", "password", "secret", "client_secret", "private_key", "hmac_secret",
                 "webhook_secrets", "secrets", "security_token", "service_account_key", "api_key"}
# Sections whose wrong values are not echoed either (`auth: "Bearer <token>"`).
NO_ECHO = {"auth"}

# What a pattern-constrained field expects, in words: an operator should not have to read a regex.
_PATTERN_WORDS: dict[str, str] = {}


def pattern(regex: str, words: str) -> str:
    """Register what `regex` expects, in words (`must be <words>`), and return the regex for pydantic."""
    _PATTERN_WORDS[regex] = words
    return regex


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def message_of(err: dict) -> str:
    """One pydantic error in words: what is expected, never a raw regular expression."""
    if err["type"] == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")))
        return f"must be {words}" if words else "is not in the expected form"
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return err["msg"].removeprefix("Value error, ")


def problems_of(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        # Discriminated unions add the tag to the path (auth.bearer.token): keep the user's path.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = message_of(err)
        if err["type"] in ("missing", "extra_forbidden"):
            problems.append(f"{field_path(loc)}: {msg}")
        elif any(isinstance(p, str) and p in SECRET_FIELDS | NO_ECHO for p in loc) or isinstance(
                err.get("input"), (dict, list, tuple)):
            # A whole section (or a value under `auth`) may hold a literal secret: name the field only.
            problems.append(f"{field_path(loc)}: {msg}")
        else:
            problems.append(f"{field_path(loc)}: {msg} (got {_short(err.get('input'))})")
    return problems


def invalid(what: str, exc: ValidationError) -> InvalidInput:
    return InvalidInput(what, problems_of(exc))
