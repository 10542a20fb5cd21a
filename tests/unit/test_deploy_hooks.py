"""After-deploy hooks: the smartwatch token's delivery or revocation, one node's failing hook
kept to that node, and what `deploy --diff` may show of a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from clonefleet.deploy_diff import FileChange, file_diffs, hidden_reason, mask
from clonefleet.deploy_hooks import run_after_deploy
from clonefleet.inventory import load_fleet
from clonefleet.secrets import SecretStore, open_secrets
from clonefleet.serve import TOKEN_FACT, token_owner
from clonefleet.services import DeployOutcome, ServiceContext, registry, smartwatch
from clonefleet.state import SqliteStateStore

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab.toml"
WROTE_TOKEN = DeployOutcome(failed=False, succeeded=frozenset({
    smartwatch.TOKEN_OPERATION, f"clonefleet node | smartwatch agent | "
                                f"{smartwatch.TOKEN_OPERATION}"}))


@pytest.fixture
def context(tmp_path: Path) -> ServiceContext:
    fleet = load_fleet(LAB)
    return ServiceContext(fleet, fleet.node("fsn-1"), SqliteStateStore(tmp_path / "s.sqlite"),
                          open_secrets(tmp_path))


def test_the_deploys_token_operation_has_the_name_the_hook_checks() -> None:
    source = (ROOT / "deploys" / "smartwatch.py").read_text()
    assert f'name="{smartwatch.TOKEN_OPERATION}"' in source


def test_a_token_is_delivered_when_its_operation_succeeded(context: ServiceContext) -> None:
    token = smartwatch.drain_token(context, dry_run=False)
    assert token and token_owner(context.fleet, context.store, token) == "fsn-1"

    smartwatch.after_deploy(context, WROTE_TOKEN)

    assert context.store.get_fact("fsn-1", smartwatch.DELIVERED_FACT) is True
    assert token_owner(context.fleet, context.store, token) == "fsn-1"
    assert smartwatch.drain_token(context, dry_run=False) is None  # nothing new to give


@pytest.mark.parametrize("outcome", [
    DeployOutcome(failed=True, succeeded=frozenset({"smartwatch config"})),
    DeployOutcome(failed=False, succeeded=frozenset({"Hostname"})),
])
def test_a_token_whose_operation_did_not_succeed_is_revoked(
        context: ServiceContext, outcome: DeployOutcome) -> None:
    token = smartwatch.drain_token(context, dry_run=False)
    assert token

    smartwatch.after_deploy(context, outcome)

    assert token_owner(context.fleet, context.store, token) is None
    assert context.store.get_fact("fsn-1", TOKEN_FACT) is None
    assert context.store.get_fact("fsn-1", smartwatch.DELIVERED_FACT) is None


def test_a_deploy_that_issued_nothing_leaves_the_nodes_token_alone(
        context: ServiceContext) -> None:
    token = smartwatch.drain_token(context, dry_run=False)
    assert token
    smartwatch.after_deploy(context, WROTE_TOKEN)

    smartwatch.after_deploy(context, DeployOutcome(failed=True, succeeded=frozenset()))

    assert token_owner(context.fleet, context.store, token) == "fsn-1"


def test_a_dry_run_issues_no_token(context: ServiceContext) -> None:
    assert smartwatch.drain_token(context, dry_run=True) == smartwatch.DRY_RUN_STAND_IN
    assert context.store.get_fact("fsn-1", TOKEN_FACT) is None
    assert context.store.get_fact("fsn-1", smartwatch.PENDING_FACT) is None


def test_a_hook_that_raises_is_that_nodes_error_and_the_others_still_run(
        context: ServiceContext, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def hook(hook_context: ServiceContext, outcome: DeployOutcome) -> None:
        seen.append(hook_context.node.name)
        if hook_context.node.name == "fsn-1":
            raise RuntimeError("disk\nfull")

    monkeypatch.setattr(registry, "AFTER_DEPLOY", [hook])
    outcome = DeployOutcome(failed=False, succeeded=frozenset())
    secrets: SecretStore = context.secrets

    errors = run_after_deploy(context.fleet, context.store, secrets,
                              {"fsn-1": outcome, "fsn-2": outcome})

    assert seen == ["fsn-1", "fsn-2"]
    assert errors == {"fsn-1": "after the deploy: RuntimeError: disk full"}


def change(mode: int | None, before: str, after: str, path: str | None = "/etc/app.conf"
           ) -> FileChange:
    return FileChange(path=path, created=not before, before=tuple(before.splitlines(True)),
                      after=tuple(after.splitlines(True)), mode=mode)


def test_diff_hides_private_files_secrets_and_unidentified_files() -> None:
    secret = "s3cret-value-0123456789"
    assert hidden_reason(change(0o600, "a\n", "b\n"), [secret]) == "mode 600"
    assert hidden_reason(change(0o640, "a\n", "b\n"), [secret]) == "mode 640"
    assert hidden_reason(change(0o644, "a\n", f"key={secret}\n"), [secret]) == "holds a secret"
    assert hidden_reason(change(0o644, "a\n", "b\n", path=None), []) == "unidentified file"
    assert hidden_reason(change(0o644, "a\n", "b\n"), [secret]) is None
    assert mask(f"op {secret}", [secret]) == "op ****"


def test_diff_of_a_readable_file_is_unified_and_a_new_file_comes_from_dev_null() -> None:
    [shown] = file_diffs([change(0o644, "x = 1\ny = 2\n", "x = 1\ny = 3\n")], [])
    assert shown["diff"] == ("--- /etc/app.conf\n+++ /etc/app.conf\n@@ -1,2 +1,2 @@\n"
                             " x = 1\n-y = 2\n+y = 3\n")
    [created] = file_diffs([change(None, "", "new\n")], [])
    assert created["created"] and created["diff"].startswith("--- /dev/null\n+++ /etc/app.conf")
