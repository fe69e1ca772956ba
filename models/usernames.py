"""What a local username may be: one normal form, no invisible or meaningless code points, and the
rule of its user store.

Every door (the CLI, the API, `outbound import`) goes through here, so the same name is refused
the same way wherever it arrives.
"""

import re
import unicodedata
from dataclasses import dataclass

# Control (Cc), format (Cf: bidi overrides, zero-width joiners), surrogate (Cs), private-use (Co)
# and unassigned (Cn) code points: invisible or meaningless in a name, and a way to make two
# accounts that look alike.
REFUSED_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible formatting character",
                      "Cs": "an unpaired surrogate", "Co": "a private-use character",
                      "Cn": "an unassigned code point"}

# WSO2 Identity Server's default UsernameJavaRegEx for a user store.
WSO2_DEFAULT_PATTERN = r"^[\S]{3,30}$"
WSO2_DEFAULT_WORDS = "3 to 30 characters, none of them white space"


def normalized(value: str) -> str:
    """The username in Unicode NFC; raise ValueError naming the first refused code point."""
    for position, char in enumerate(value, start=1):
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            raise ValueError(f"character {position} is {REFUSED_CATEGORIES[category]} (U+{ord(char):04X}); "
                             f"a username is made of visible characters (got {value[:80]!r})")
    return unicodedata.normalize("NFC", value)


@dataclass(frozen=True)
class UsernameRule:
    """A user store's username rule: a regular expression, and what it expects in words."""

    pattern: str = WSO2_DEFAULT_PATTERN
    words: str = WSO2_DEFAULT_WORDS

    def problem(self, field: str, username: str, user_store: str) -> str | None:
        """None when `username` follows the rule, else one problem line naming the field and the value."""
        if re.search(self.pattern, username):
            return None
        return f"{field}: {username[:80]!r} does not follow the username rule of user store {user_store}: {self.words}"
