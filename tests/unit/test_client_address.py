"""The client address: the TCP peer, or behind trusted proxies the last untrusted hop of
X-Forwarded-For."""

from ipaddress import ip_network

import pytest

from service.http.client_address import UNKNOWN, Network, resolve_client_address
from service.settings import Settings

PROXIES: tuple[Network, ...] = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert resolve_client_address("192.0.2.1", ["203.0.113.9"], ()) == "192.0.2.1"


def test_an_untrusted_peer_cannot_name_another_address() -> None:
    assert resolve_client_address("192.0.2.1", ["203.0.113.9"], PROXIES) == "192.0.2.1"


def test_behind_a_trusted_proxy_the_hop_it_appended_is_the_client() -> None:
    assert resolve_client_address("10.0.0.2", ["203.0.113.9"], PROXIES) == "203.0.113.9"


def test_hops_the_client_wrote_itself_are_not_believed() -> None:
    # The client sent "X-Forwarded-For: 198.51.100.1, 198.51.100.2"; our proxy appended
    # what it saw.
    header = ["198.51.100.1, 198.51.100.2, 203.0.113.9"]
    assert resolve_client_address("10.0.0.2", header, PROXIES) == "203.0.113.9"


def test_a_chain_of_trusted_proxies_is_walked_right_to_left() -> None:
    header = ["198.51.100.1, 203.0.113.9, 10.1.1.1, 10.2.2.2"]
    assert resolve_client_address("10.0.0.2", header, PROXIES) == "203.0.113.9"


def test_several_header_lines_are_one_list_in_order() -> None:
    headers = ["198.51.100.1", "203.0.113.9, 10.1.1.1"]
    assert resolve_client_address("10.0.0.2", headers, PROXIES) == "203.0.113.9"


def test_no_header_from_a_trusted_proxy_is_the_proxy_itself() -> None:
    assert resolve_client_address("10.0.0.2", [], PROXIES) == "10.0.0.2"


def test_when_every_hop_is_trusted_the_furthest_one_is_the_client() -> None:
    assert resolve_client_address("10.0.0.2", ["10.3.3.3, 10.1.1.1"], PROXIES) == "10.3.3.3"


@pytest.mark.parametrize(
    "garbage", ["", "unknown", "203.0.113.9:443", "<script>", "x" * 300, "1.2.3.4.5"]
)
def test_a_hop_that_is_no_address_stops_the_walk_at_the_last_known_one(garbage: str) -> None:
    header = [f"203.0.113.9, {garbage}, 10.1.1.1"]
    assert resolve_client_address("10.0.0.2", header, PROXIES) == "10.1.1.1"


def test_addresses_are_spelled_canonically() -> None:
    assert resolve_client_address("2001:DB8:0:0::5", [" 2001:0db9::1 "], PROXIES) == (
        "2001:db9::/64"
    )
    # An IPv4 client seen over an IPv6 socket counts as the IPv4 client.
    assert resolve_client_address("::ffff:192.0.2.1", [], ()) == "192.0.2.1"


def test_an_ipv6_client_is_counted_by_its_64_so_it_cannot_rotate_past_the_limits() -> None:
    one_subscriber = {
        resolve_client_address(f"2001:db8:aaaa:bbbb::{n:x}", [], ()) for n in range(1, 500)
    }
    assert one_subscriber == {"2001:db8:aaaa:bbbb::/64"}
    assert resolve_client_address("2001:db8:aaaa:bbbc::1", [], ()) == "2001:db8:aaaa:bbbc::/64"


@pytest.mark.parametrize("peer", [None, "", "not-an-ip"])
def test_a_peer_without_an_ip_address_is_unknown(peer: str | None) -> None:
    assert resolve_client_address(peer, ["203.0.113.9"], PROXIES) == UNKNOWN


def test_the_setting_takes_a_comma_separated_list_of_ips_and_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().trusted_proxies == ()
    monkeypatch.setenv("WALLET_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7,::1")
    settings = Settings()
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]
