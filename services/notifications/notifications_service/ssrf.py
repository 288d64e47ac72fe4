"""The SSRF guard: a webhook target resolved once, checked, and connected to by address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["BlockedTarget", "Target", "is_blocked", "resolve_target"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services that are not in a private or link-local range.
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


class BlockedTarget(ValueError):
    """The URL is malformed, does not resolve, or reaches an address webhooks may not."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect (`url` names the checked address) and what to call the host."""

    url: str
    host: str
    address: IPAddress


def is_blocked(
    address: IPAddress, allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    if any(address in network for network in allow):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_blocked(address.ipv4_mapped, allow)
    return (
        address in _METADATA
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


async def resolve_target(url: str, *, allow_networks: list[str]) -> Target:
    """Check `url` and pin it to one resolved address; BlockedTarget if it may not be called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedTarget("the URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise BlockedTarget("the URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BlockedTarget("the URL has an invalid port") from None
    host = parts.hostname
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError):
        raise BlockedTarget("the host does not resolve") from None
    allow = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    # Any blocked answer refuses the host: a name that also points inward is not trusted.
    if not addresses or any(is_blocked(a, allow) for a in addresses):
        raise BlockedTarget("the host resolves to an address webhooks may not reach")
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    return Target(url=pinned, host=parts.netloc.rpartition("@")[2], address=address)
