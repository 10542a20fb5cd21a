"""pyinfra facts the rollout plan reads on every node (imported by `gather` only: pyinfra).

Each fact's command never fails on its own account: it reports its exit status on a last
line of its own (`CLONEFLEET-EXIT: N`), stderr merged, so a node where apt fails says why in
the plan instead of dropping out of pyinfra's active hosts. The result is the raw text and
the status (`FactOutput`); the pure parsers (`clonefleet.rollout.apt`, `.restarts`) read it
in the control plane, which never imports pyinfra.
"""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api.facts import FactBase

EXIT_MARKER = "CLONEFLEET-EXIT: "
# The C locale: apt's and needrestart's words are parsed. No prompt, ever (needrestart #241).
ENVIRONMENT = "LANG=C LC_ALL=C DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l"


class FactOutput(TypedDict):
    exit: int
    output: str


def _reported(command: str) -> str:
    return f"( {command} ) 2>&1; echo \"{EXIT_MARKER}$?\""


def split_exit(lines: list[str]) -> FactOutput:
    """The output lines and the exit status the command reported on its last line."""
    status = 255  # the marker missing: the shell itself was cut off
    if lines and lines[-1].startswith(EXIT_MARKER):
        status = int(lines[-1].removeprefix(EXIT_MARKER).strip() or 255)
        lines = lines[:-1]
    return {"exit": status, "output": "\n".join(lines)}


class UpgradeSimulation(FactBase[FactOutput]):
    """`apt-get -s dist-upgrade` (after `apt-get update` unless `refresh` is False): what a
    full upgrade would install, with every candidate's sources. Changes nothing on the node
    but, when refreshing, its package lists (as unattended-upgrades does daily)."""

    def command(self, refresh: bool = True) -> str:
        simulate = (f"{ENVIRONMENT} apt-get -s -o Debug::NoLocking=1 dist-upgrade")
        if refresh:
            # Waits for apt's lock (unattended-upgrades may hold it) instead of failing.
            # --error-on=any: a source that cannot be fetched fails the fact (apt 2.6 only
            # warns and keeps the old lists, which would make a stale plan look current).
            simulate = (f"{ENVIRONMENT} apt-get -q -o DPkg::Lock::Timeout=120 "
                        f"--error-on=any update >/dev/null && {simulate}")
        return _reported(simulate)

    def process(self, output: list[str]) -> FactOutput:
        return split_exit(output)


class RebootRequiredFlag(FactBase[FactOutput]):
    """Whether /var/run/reboot-required exists, and the packages in its .pkgs list."""

    def command(self) -> str:
        return _reported("if [ -e /var/run/reboot-required ]; then echo yes; "
                         "cat /var/run/reboot-required.pkgs 2>/dev/null || true; "
                         "else echo no; fi")

    def process(self, output: list[str]) -> FactOutput:
        return split_exit(output)


class NeedRestartBatch(FactBase[FactOutput]):
    """needrestart's batch report (list mode: it restarts nothing), or a marker line when
    needrestart is not installed."""

    def command(self) -> str:
        return _reported("if command -v needrestart >/dev/null 2>&1; then "
                         f"{ENVIRONMENT} needrestart -b -r l; "
                         "else echo NEEDRESTART-MISSING; fi")

    def process(self, output: list[str]) -> FactOutput:
        return split_exit(output)
