"""Which addresses a request may never reach: link-local ranges and cloud metadata services.

A manifest is untrusted input, and on a cloud VM or a cluster node the metadata service
(169.254.169.254 and friends) hands out credentials to anyone who asks from inside. So a URL
whose host is, or resolves to, such an address is refused as a per-row failure (`blocked_address`),
for the first request and for every redirect. Loopback and private ranges stay allowed: LAN
mirrors and local test servers are common and not a secret store.

Pure: the connector checks literal hosts and names before it connects, and the resolver checks
every address a name resolves to (flowdc/resolver.py). Behind a proxy the client never learns
the origin's address, so there only the names (and literal addresses in URLs) can be checked.
"""

from __future__ import annotations

import ipaddress

# Link-local (where AWS, GCP, Azure, OpenStack and Oracle serve metadata) and the few metadata
# addresses outside it: AWS's IPv6 one (fd00:ec2::254) and Alibaba's (100.100.100.200).
BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
))
METADATA_NAMES = frozenset({
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
})


class BlockedAddress(OSError):
    """The host is, or resolves only to, an address the policy refuses (an OSError, so aiohttp's
    connector passes it on like any failure to connect)."""


def blocked_ip(address: str) -> bool:
    """Whether a literal address is refused; False for anything that is not an address."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is the same service
    return any(ip in net for net in BLOCKED_NETWORKS)


def blocked_name(host: str) -> bool:
    """Whether a host name (before any resolution) is a metadata service's or a refused literal address."""
    name = host.lower().rstrip(".")
    return name in METADATA_NAMES or blocked_ip(name)
