"""The client address: the one answer to "who is asking" that every throttle counts by.

It is the TCP peer, unless the peer is one of ``WALLET_TRUSTED_PROXIES``: then it is the
last hop of X-Forwarded-For that is not a trusted proxy. The header is read right to left
because each proxy appends the address it saw: the hops at the right were written by our
own proxies, the ones at the left by whoever sent the request, who can write anything.

An IPv6 client is counted by its /64: one subscriber is usually given a whole /64, so
counting single IPv6 addresses would let one client rotate through unlimited addresses.
"""

from collections.abc import Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from aiohttp import web

from service.http.state import SETTINGS

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# A peer with no IP address (a Unix socket): all such clients share one address.
UNKNOWN = "unknown"
# The IPv6 prefix one client is counted by.
IPV6_CLIENT_PREFIX_BITS = 64


def _parse(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket is the same client as over IPv4.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client address, in its canonical spelling, from the TCP peer and the values of
    every X-Forwarded-For header (in order). Never text the client chose: only an address
    that parses, written out again by ``ipaddress``."""
    address = _parse(peer)
    if address is None:
        return UNKNOWN
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if not any(address in network for network in trusted):
            break
        previous = _parse(hop)
        if previous is None:
            # Garbage where a trusted proxy would have written an address: the proxy
            # itself is the last hop we know.
            break
        address = previous
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/{IPV6_CLIENT_PREFIX_BITS}", strict=False))
    return str(address)


def client_address(request: web.Request) -> str:
    return resolve_client_address(
        request.remote,
        request.headers.getall("X-Forwarded-For", []),
        request.app[SETTINGS].trusted_proxies,
    )
