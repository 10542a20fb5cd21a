"""What `apt-get -s dist-upgrade` says a node would upgrade, parsed: pure, no I/O.

apt's simulation prints one line per package it would unpack and one per package it would
configure or remove:

    Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable,
        Debian-Security:12/oldstable-security [amd64])      (one line in apt's output)
    Inst linux-image-6.1.0-28-amd64 (6.1.119-1 Debian-Security:12/stable-security [amd64])
    Remv old-package [1.0]

`[old]` is missing for a package newly installed (a new kernel ABI); the parenthesis holds
the new version, then every source it is available from as `LABEL:VERSION/ARCHIVE`, comma
separated, then the architecture; a trailing `[...]` lists packages apt had to break first.
The simulation is read with `-o Debug::NoLocking=1`, so it never waits for (or takes) apt's
lock while unattended-upgrades runs. The output must be in the C locale (`LANG=C`).

A package counts as a security update when one of its sources is a Debian security archive
(an archive ending in `-security`, e.g. `stable-security`, `oldstable-security`, or the label
`Debian-Security`), as unattended-upgrades' default origin pattern chooses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INST = re.compile(r"^Inst (?P<name>\S+) (?:\[(?P<old>[^\]]*)\] )?\((?P<body>[^)]*)\)")
REMV = re.compile(r"^Remv (?P<name>\S+)(?: \[(?P<old>[^\]]*)\])?")
ARCH = re.compile(r"\s*\[(?P<arch>[^\]]+)\]\s*$")
SECURITY_LABEL = "Debian-Security"


@dataclass(frozen=True)
class Source:
    """One place the new version is available from, as apt names it."""

    label: str  # the Release file's Label (else Origin), e.g. "Debian-Security"
    version: str  # the release's version, e.g. "12" or "12.8"
    archive: str  # the suite, e.g. "stable-security"

    @property
    def security(self) -> bool:
        return self.label == SECURITY_LABEL or self.archive.endswith("-security")

    def __str__(self) -> str:
        return f"{self.label}:{self.version}/{self.archive}"


@dataclass(frozen=True)
class Upgrade:
    name: str
    old_version: str | None  # None: newly installed (e.g. a new kernel ABI package)
    new_version: str
    architecture: str
    sources: tuple[Source, ...]

    @property
    def security(self) -> bool:
        return any(source.security for source in self.sources)

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(source.archive for source in self.sources))


@dataclass(frozen=True)
class Simulation:
    upgrades: tuple[Upgrade, ...]
    removals: tuple[str, ...]

    def selected(self, everything: bool) -> tuple[Upgrade, ...]:
        """The security updates, or every upgrade with `everything`."""
        return self.upgrades if everything else tuple(
            upgrade for upgrade in self.upgrades if upgrade.security)


def _source(text: str) -> Source:
    label, _, rest = text.strip().partition(":")
    version, _, archive = rest.rpartition("/")
    return Source(label, version, archive)


def parse_simulation(output: str) -> Simulation:
    """Given the output of `apt-get -s dist-upgrade` (or `upgrade`), the packages it would
    upgrade or newly install, and those it would remove. Lines other than Inst/Remv (the
    human-readable summary, Conf lines) are ignored."""
    upgrades = []
    removals = []
    for line in output.splitlines():
        match = INST.match(line)
        if match:
            body = match.group("body")
            architecture = ""
            arch = ARCH.search(body)
            if arch:
                architecture = arch.group("arch")
                body = body[:arch.start()]
            version, _, sources = body.strip().partition(" ")
            upgrades.append(Upgrade(
                name=match.group("name"), old_version=match.group("old"),
                new_version=version, architecture=architecture,
                sources=tuple(_source(part) for part in sources.split(",") if part.strip())))
            continue
        removal = REMV.match(line)
        if removal:
            removals.append(removal.group("name"))
    return Simulation(tuple(upgrades), tuple(removals))


# Packages whose new version only takes effect, or can only be trusted, after a reboot of an
# encrypted node: the kernel, the C library everything links, PID 1 and udev, and everything
# that goes into the initramfs that unlocks the disk (a broken one is found at the next boot
# otherwise, far from the change that broke it).
REBOOT_PACKAGES = re.compile(
    r"^(linux-image-.*|linux-signed-image-.*|libc6|systemd|systemd-sysv|libsystemd0|udev|"
    r"libudev1|cryptsetup.*|libcryptsetup.*|dropbear.*|initramfs-tools.*|busybox|klibc-utils|"
    r"libklibc|dbus)$")


def reboot_packages(upgrades: tuple[Upgrade, ...]) -> tuple[str, ...]:
    """The packages among `upgrades` that make the node need a reboot."""
    return tuple(upgrade.name for upgrade in upgrades if REBOOT_PACKAGES.match(upgrade.name))
