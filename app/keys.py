"""Where every key lives: one layout for a single Redis, Sentinel and Redis Cluster.

Redis Cluster runs a script only if all of its keys hash to one slot; a key's slot is the hash of
its {tag} when it has one. So everything a user's scripts touch carries the user's tag:

    <prefix>:{<tag>}:session:<sid>          the session (a hash)
    <prefix>:{<tag>}:applied:<sid>          its recent cart adds' request ids
    <prefix>:{<tag>}:user-epoch:<uid>       the user's epoch (revocation)
    <prefix>:{<tag>}:user-index:<uid>       the user's sessions
    <prefix>:{<tag>}:live-sessions          the live sessions of every user with this tag
    <prefix>:{<tag>}:login-...:<username>   the throttle's counters of the account

`uid` is a hash of the username, and the tag its first two hex digits: TAGS tags, spread over
the slots, so every primary holds a share of the users. A session's cookie starts with its user's
uid, so the request's script names every key it touches, the user's epoch included, before Redis
runs it: in a slot that is being migrated, Redis then answers ASK or TRYAGAIN (the client follows)
instead of letting the script read half the keys. The one global index of live sessions is now
one per tag, and counting them all is TAGS ZCOUNTs (`live_keys`).

Keys that are alone in their script need no tag: accounts, the per-address counters, presence."""

import hashlib

#: How many tags the users are spread over: the largest share one slot can hold is 1/TAGS of them.
TAGS = 256
#: Hex digits of a user's id: 80 bits, so that two names never share an epoch by chance.
UID_HEX = 20


def uid(username: str) -> str:
    """The user's id in keys and cookies (not secret: a cookie's holder holds the session anyway)."""
    return hashlib.sha256(username.encode()).hexdigest()[:UID_HEX]


def tag_of(uid: str) -> str:
    return uid[:2]


def tagged(prefix: str, tag: str) -> str:
    """The start of every key with this tag."""
    return f"{prefix}:{{{tag}}}:"


def user_space(prefix: str, username: str) -> str:
    """The start of the keys of this user's tag."""
    return tagged(prefix, tag_of(uid(username)))


def live_key(prefix: str, tag: str) -> str:
    """The index of live sessions of the users with this tag (a sorted set of session ids by expiry)."""
    return tagged(prefix, tag) + "live-sessions"


def live_keys(prefix: str) -> list[str]:
    """Every tag's index of live sessions."""
    return [live_key(prefix, f"{tag:02x}") for tag in range(TAGS)]
