"""The rules for a new password: no control characters, not a commonly used password."""

from importlib import resources

import pytest

from service.auth.password_rules import check_new_password
from service.domain import refusals
from service.domain.limits import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from tests.support.helpers import refusing


@pytest.mark.parametrize(
    "password", ["password", "PASSWORD", "PassWord", "aaaaaaaa", "12345678", "qwertyuiop"]
)
def test_a_commonly_used_password_is_weak_whatever_its_case(password: str) -> None:
    with refusing(refusals.WEAK_PASSWORD) as refused:
        check_new_password(password)
    assert refused.value.field == "password"


@pytest.mark.parametrize(
    "password", ["\x00" * 8, "abc\tdefgh", "abcdefgh\n", "abc\x7fdefgh", "abc\u0085defgh"]
)
def test_control_characters_are_refused(password: str) -> None:
    with refusing(refusals.VALIDATION_ERROR) as refused:
        check_new_password(password)
    assert refused.value.field == "password"


@pytest.mark.parametrize(
    "password", ["correct horse battery", "Tr0ub4dor&3x", "пароль-для-кошелька"]
)
def test_an_uncommon_password_passes(password: str) -> None:
    check_new_password(password)


def test_the_list_ships_with_the_package_lowercased_and_within_the_length_rule() -> None:
    text = resources.files("service.auth").joinpath("common_passwords.txt").read_text("utf-8")
    entries = text.splitlines()
    assert len(entries) > 8_000
    assert len(set(entries)) == len(entries)
    assert all(entry == entry.lower() for entry in entries)
    assert all(MIN_PASSWORD_CHARS <= len(entry) <= MAX_PASSWORD_CHARS for entry in entries)
    assert entries[:3] == ["123456789", "password", "12345678"]  # most common first
