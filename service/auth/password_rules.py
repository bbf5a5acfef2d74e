"""The rules a new password must pass, at sign-up and at any later password change: no
control characters, and not a commonly used password.

The list (common_passwords.txt, shipped with the package) comes from the 20,000 common
passwords that Django ships (django/contrib/auth/common-passwords.txt.gz, BSD licence,
compiled by Royce Williams), lowercased, most common first, keeping the 8,354 that are
long enough to pass the length rule at all.
"""

import unicodedata
from functools import cache
from importlib import resources

from service.domain import refusals
from service.domain.refusals import Refused


@cache
def _common_passwords() -> frozenset[str]:
    text = resources.files("service.auth").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(line.lower() for line in text.splitlines() if line)


def check_new_password(password: str, field: str = "password") -> None:
    """Refuses a new password with a control character (422 validation_error) or one of
    the commonly used passwords, whatever its case (422 weak_password); ``field`` names
    it in the error."""
    # Control characters cannot be typed, differ between clients, and hide in logs.
    if any(unicodedata.category(char) == "Cc" for char in password):
        raise Refused(
            refusals.VALIDATION_ERROR, f"{field} must not contain control characters", field
        )
    if password.lower() in _common_passwords():
        raise Refused(refusals.WEAK_PASSWORD, field=field)
