"""Who is provisioned, and under which name: the triggers that fire organisation-level connectors,
the identity providers (JIT, their connectors), each user store's username rule, and what an event
for an unknown user does."""

import re
from typing import Optional

from pydantic import Field, field_validator

from models.config.base import Name, Strict
from models.usernames import WSO2_DEFAULT_PATTERN, WSO2_DEFAULT_WORDS, UsernameRule

ORG_TRIGGERS = ("api", "console", "self_signup", "jit", "directory", "scim")


class IdentityProvider(Strict):
    name: Name
    jit_provisioning: bool = False
    connectors: list[str] = Field(default_factory=list)


class UserStoreSettings(Strict):
    """A user store's username rule; stores not listed follow WSO2's default (`^[\\S]{3,30}$`)."""

    username_pattern: str = WSO2_DEFAULT_PATTERN
    # What the pattern expects, in words, for the messages that refuse a username.
    username_description: Optional[str] = Field(default=None, max_length=200)

    @field_validator("username_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def rule(self) -> UsernameRule:
        words = self.username_description or (WSO2_DEFAULT_WORDS if self.username_pattern == WSO2_DEFAULT_PATTERN
                                              else f"the pattern {self.username_pattern} set in the configuration")
        return UsernameRule(self.username_pattern, words)


class EventSettings(Strict):
    """How events for users the store does not know are treated."""

    # False: user.updated/disabled/enabled/roles_changed/deleted for an unknown user is refused (a typo
    # must not provision a stranger). True: such an event creates the user from what it carries.
    upsert_unknown_users: bool = False
