"""Provisioning patterns (`{UN}`, `{UD, UN, TD, IDP}`): parsed when the configuration loads, so a
broken one is refused with the position of the mistake instead of surfacing at the first user.
"""

from models.errors import PatternError

TOKENS = ("UN", "UD", "TD", "IDP")
ALLOWED = "allowed placeholders: {UN} {UD} {TD} {IDP}, written in one pair of braces separated by commas, " \
          "e.g. {UD, UN} (the connector's separator joins them)"


def _error(pattern: str, position: int, what: str) -> PatternError:
    return PatternError(f"pattern {pattern!r}: at position {position}, {what}; {ALLOWED}")


def parse_pattern(pattern: str) -> list[str]:
    """The placeholders of `pattern`, in order; raise PatternError naming the position (1-based) of the mistake."""
    i, n = 0, len(pattern)
    while i < n and pattern[i] == " ":
        i += 1
    if i == n or pattern[i] != "{":
        raise _error(pattern, i + 1, "expected '{'")
    i += 1
    tokens = []
    while True:
        while i < n and pattern[i] == " ":
            i += 1
        start = i
        while i < n and (pattern[i].isalnum() or pattern[i] == "_"):
            i += 1
        name = pattern[start:i]
        if not name:
            found = f"found {pattern[i]!r}" if i < n else "the pattern ends"
            raise _error(pattern, i + 1, f"expected a placeholder, {found}")
        if name not in TOKENS:
            raise _error(pattern, start + 1, f"unknown placeholder {name!r}")
        tokens.append(name)
        while i < n and pattern[i] == " ":
            i += 1
        if i == n:
            raise _error(pattern, i + 1, "expected ',' or '}', the pattern ends")
        if pattern[i] == "}":
            i += 1
            break
        if pattern[i] != ",":
            raise _error(pattern, i + 1, f"expected ',' or '}}', found {pattern[i]!r}")
        i += 1
    rest = pattern[i:].rstrip(" ")
    if rest:
        raise _error(pattern, i + 1, f"unexpected {rest[:20]!r} after the closing '}}'")
    return tokens
