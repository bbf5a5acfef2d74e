"""A value read from outside (a stream field, a ledger column) as one of a fixed set."""

from typing import TypeVar

_Choice = TypeVar("_Choice", bound=str)


def one_of(raw: str, choices: tuple[_Choice, ...], what: str) -> _Choice:
    """``raw`` as the member of ``choices`` it equals (typed as the choices' Literal);
    ValueError naming ``what`` for anything else."""
    for choice in choices:
        if raw == choice:
            return choice
    raise ValueError(f"unknown {what} {raw!r}")
