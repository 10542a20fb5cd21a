"""Per-node drain tokens: issued at deploy time, stored on the node, only a hash kept here."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from clonefleet.inventory import Fleet
from clonefleet.state import StateStore

TOKEN_FACT = "drain_token_sha256"
ISSUED_FACT = "drain_token_issued_at"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(fleet: Fleet, store: StateStore, node: str) -> str:
    """Given a node of the fleet, make a new drain token, keep its SHA-256 and return it.

    The token is returned once and never stored in clear: issuing again replaces (revokes)
    the previous one.
    """
    fleet.node(node)  # raises UnknownNodeError for a name the fleet does not have
    token = secrets.token_urlsafe(32)
    with store.transaction():
        store.set_fact(node, TOKEN_FACT, _digest(token))
        store.set_fact(node, ISSUED_FACT, time.time())
    return token


def revoke_token(store: StateStore, node: str) -> None:
    """Make `node`'s drain token (if any) valid no more: serve refuses it from now on."""
    with store.transaction():
        store.delete_fact(node, TOKEN_FACT)
        store.delete_fact(node, ISSUED_FACT)


def token_owner(fleet: Fleet, store: StateStore, token: str) -> str | None:
    """The node of the fleet whose current drain token `token` is, or None.

    Lets serve judge the caller from the token alone, before it reads the request's body.
    Every node is compared (in constant time), so how long it takes says nothing about which
    node, if any, matched.
    """
    if not token:
        return None
    digest = _digest(token)
    owner = None
    for node in sorted(fleet.nodes):
        expected = store.get_fact(node, TOKEN_FACT)
        if isinstance(expected, str) and hmac.compare_digest(expected, digest):
            owner = node
    return owner


def verify_token(store: StateStore, node: str, token: str) -> bool:
    """True when `token` is the current drain token of `node` (constant-time comparison)."""
    expected = store.get_fact(node, TOKEN_FACT)
    if not isinstance(expected, str) or not token:
        return False
    return hmac.compare_digest(expected, _digest(token))
