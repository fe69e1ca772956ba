"""Whether a target's value is the value we want: the one comparison rule.

The plan (`tasks/plan/delta.py` `_differs`, its vectorised twin over frames), the connectors
(`connectors/base.py` `differences`) and the lost-answer check (`connectors/outcome.py`) all ask
this module, so a write the outcome check reads as applied is one the planner sees no drift in.

Canonical values: text trimmed; an empty string, list or mapping is absent (None). The fields in
`CASELESS` compare without case: emails, and usernames (SCIM's userName is caseExact=false; Google
and Salesforce usernames are addresses), so a server that changes their case shows no drift. No
connector declares case-exact usernames (`Capabilities` declares case for group names only).
"""

from typing import Any

CASELESS = ("email", "user_name")


def caseless(field: str) -> bool:
    """Whether `field` is compared without case."""
    return field in CASELESS


def canonical(value: Any) -> Any:
    """The value as a target compares it: text trimmed, empty as absent."""
    if value == "" or value == [] or value == {}:
        return None
    if isinstance(value, str):
        return value.strip()
    return value


def same(field: str, want: Any, got: Any) -> bool:
    """Whether the target's `got` for `field` holds the desired `want`, once both are canonical."""
    a, b = canonical(want), canonical(got)
    if caseless(field) and isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b
