"""The smartwatch agent's drain token: issued by the deploy that installs it, recorded as
delivered only when the operation writing it succeeded on that node, revoked otherwise.

Invariant: a node's token is valid in the state store only while it is on the node (or on
its way there, inside the running deploy). The token is issued lazily, when the smartwatch
deploy reads `smartwatch_drain_token` on that node, so a deploy without smartwatch
(`--deploy deploys.base:base`) neither issues nor delivers one; the after-deploy hook then
marks it delivered if `smartwatch drain token` succeeded there, and revokes it if not (the
operation failed or never ran), so no token stays valid that no node holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clonefleet.serve.tokens import issue_token, revoke_token

if TYPE_CHECKING:
    from clonefleet.services import DeployOutcome, ServiceContext

DRAIN_TOKEN_KEY = "smartwatch_drain_token"
# The `name=` of the operation in deploys/smartwatch.py (`drain_token`) that writes the token.
TOKEN_OPERATION = "smartwatch drain token"
DELIVERED_FACT = "drain_token_delivered"
# Issued for a deploy that has not ended yet: the hook settles it (delivered or revoked).
PENDING_FACT = "drain_token_pending"
# What `clonefleet deploy --diff` is given instead of a token: it issues nothing.
DRY_RUN_STAND_IN = "(a new drain token, issued by the deploy)"


def drain_token(context: ServiceContext, dry_run: bool) -> str | None:
    """A new drain token for a node that never received one (None when it has one).

    Called when a deploy reads the token on the node, i.e. only by a deploy that installs it.
    """
    node, store = context.node.name, context.store
    if store.get_fact(node, DELIVERED_FACT):
        return None
    if dry_run:
        return DRY_RUN_STAND_IN
    with store.transaction():
        store.set_fact(node, PENDING_FACT, True)
        return issue_token(context.fleet, store, node)


def after_deploy(context: ServiceContext, outcome: DeployOutcome) -> None:
    """Delivered if the token operation succeeded on the node; else the token is revoked."""
    node, store = context.node.name, context.store
    if not store.get_fact(node, PENDING_FACT):
        return
    with store.transaction():
        if TOKEN_OPERATION in outcome.succeeded:
            store.set_fact(node, DELIVERED_FACT, True)
        else:
            revoke_token(store, node)
        store.delete_fact(node, PENDING_FACT)
