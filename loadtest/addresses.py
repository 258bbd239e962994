"""Loopback addresses of one's own, for the users and the storm's visitors alike.

All of 127/8 is loopback on Linux, so each simulated client can come from its own address, as
real clients do: the per-address limits (registrations, login spraying) then see clients, not
one load generator."""

import secrets
import sys

#: Elsewhere only 127.0.0.1 is sure to be there.
OWN_ADDRESSES = sys.platform == "linux"


def own_address() -> str:
    """A random address in 127/8 (127.0.0.1 where 127/8 is not all loopback)."""
    if not OWN_ADDRESSES:
        return "127.0.0.1"
    return f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
