"""The limits lua/includes/validate.lua repeats are Python's (service/domain)."""

import re
from pathlib import Path

from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import TXN_IDS_PER_EPOCH

VALIDATE = Path(__file__).parents[2] / "lua" / "includes" / "validate.lua"


def test_validate_lua_states_the_same_limits() -> None:
    stated = dict(re.findall(r"^local ([A-Z_]+) = (\d+)", VALIDATE.read_text(), re.MULTILINE))
    assert {name: int(stated[name]) for name in stated if name != "MAX_TTL_S"} == {
        "MAX_AMOUNT_KOPECKS": MAX_AMOUNT_KOPECKS,
        "MAX_BALANCE_KOPECKS": MAX_BALANCE_KOPECKS,
        "TXN_IDS_PER_EPOCH": TXN_IDS_PER_EPOCH,
    }
