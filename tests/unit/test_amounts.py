import pytest

from service.domain.amounts import MAX_BALANCE_KOPECKS, format_rubles


@pytest.mark.parametrize(
    ("kopecks", "rubles"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (99, "0.99"),
        (100, "1.00"),
        (10_100, "101.00"),
        (MAX_BALANCE_KOPECKS, "10000000000000.00"),
        (2**53 + 1, "90071992547409.93"),
    ],
)
def test_format_rubles_is_exact(kopecks: int, rubles: str) -> None:
    assert format_rubles(kopecks) == rubles


def test_format_rubles_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_rubles(-1)
