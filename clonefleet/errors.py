"""One exception root for everything a user can cause or fix.

The CLI catches `ClonefleetError` only, prints its one-line message and exits with its
`exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def one_line(value: object, limit: int = 0) -> str:
    """`value` as text on one line (runs of whitespace, newlines included, become one space),
    cut at `limit` characters if given: for an error's text in a table row, a log line or a
    recorded reason."""
    text = " ".join(str(value).split())
    return text[:limit] if limit else text


class ClonefleetError(Exception):
    """Base of every error the user can act on. `str(error)` is the one line to print.

    `transient` errors may go away by themselves (a node still booting); the shared retry
    policy (`clonefleet.retry`) retries those until its deadline and nothing else.
    """

    exit_code = 1
    transient = False


class ConfigError(ClonefleetError):
    """Bad input: inventory file, option, or missing local setup."""

    exit_code = 2


class InventoryError(ConfigError):
    """The fleet file is invalid. The message names the file, the key and the fix."""

    def __init__(self, path: str, key: str, problem: str, fix: str) -> None:
        self.path, self.key, self.problem, self.fix = path, key, problem, fix
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(f"{where}{problem}; {fix}")


class InventoryErrors(ConfigError):
    """Several problems in one fleet file, all reported at once: one line per problem."""

    def __init__(self, errors: list[InventoryError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


class UnknownNodeError(ConfigError):
    pass


class StateError(ClonefleetError):
    """The requested transition is not allowed from the node's current state."""

    exit_code = 3


class NotProvisionedError(StateError):
    """None of the nodes asked for has a recorded SSH address: nothing to deploy to."""


class StateConflict(StateError):
    """Another process changed what a `store.transaction()` block read before it committed
    (etcd backend): nothing of the block was written; running the command again is safe."""

    transient = True


class StateUnavailable(StateError):
    """The shared state store (etcd) did not answer; the message names the endpoint."""

    transient = True


class LeaseHeld(StateError):
    """Someone else holds the lease asked for; the message names the holder."""


class LeaseLost(StateError):
    """A lease to renew expired or was taken over: its holder must stop acting on it."""


class ProviderError(ClonefleetError):
    """A provider refused or failed an operation."""

    exit_code = 4


class InstallError(ClonefleetError):
    exit_code = 5


class KeystoreError(ClonefleetError):
    exit_code = 6


class UnlockError(ClonefleetError):
    """Remote unlock failed; subclasses say why so scripts can react."""

    exit_code = 7


class HostKeyMismatchError(UnlockError):
    """A pinned host key changed: never auto-accepted."""

    exit_code = 8


class HostKeyNotPinnedError(HostKeyMismatchError):
    """No key is pinned for the address a node is reached at: strict checking refuses it like
    a changed key, since accepting it would pin whoever answers."""


class TimeoutError_(ClonefleetError):
    """Waiting for a VM or node timed out. Named with a trailing underscore to keep the builtin."""

    exit_code = 9


class DeployError(ClonefleetError):
    exit_code = 10
