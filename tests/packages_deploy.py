"""`deploys._archive.packages_folder` alone, as deploys/smartwatch.py uses it, for chroot tests:
host data `packages_source` (a folder on the controller) becomes /opt/smartwatch/lib/pkg."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from deploys._archive import packages_folder


@deploy("packages")
def packages() -> None:
    files.directory(name="code folder", path="/opt/smartwatch", mode="755")
    packages_folder(name="code", dest="/opt/smartwatch/lib",
                    sources=[("pkg", host.data.packages_source)])
