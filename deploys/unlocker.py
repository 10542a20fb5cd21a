"""An unlocker on a fleet node: `clonefleet unlockd` in unlocker mode, so that nodes unlock
each other while the controller is down (docs/unlockd.md).

Usable from clonefleet (`deploys.full:node` composes it for the nodes in the fleet file's
`[unlock] unlockers`) and from the plain CLI (`pyinfra inventory/<fleet>.py
deploys/unlocker.py`, with host data `unlocker_store_url`). The unlocker runs on Debian's
python3 with Debian's click, rich, requests, apprise, cryptography, bcrypt, nacl, futurist and
pbr; what Debian 12 lacks or ships too old is sent from the controller as one archive into
/opt/clonefleet-unlockd/lib (`deploys._archive`): clonefleet itself, paramiko (Debian's 2.12
is older than the 3.4 clonefleet needs), etcd3gw (Debian's 2.0 is older than 2.7) and pyrage
(a Rust extension built for the stable ABI, `cp310-abi3-manylinux_2_17`: the controller's
wheel loads in Debian 12's python3.11 as it is), and smartwatch (whose apprise sender delivers
the unlocker's alerts). A package whose version reads its own metadata (paramiko) is shipped
with its `.dist-info`.

The identity is made on the node (`ssh-keygen`, ed25519, 0600, in
`<unlocker_config_dir>/identity`) when absent, and never leaves it: the controller reads only
`identity.pub` after the deploy and grants it as `node:<NAME>`
(`clonefleet.services.unlocker`). The service gets the key as a systemd credential and runs
as a dynamic user. A second run reports no changes.

Host data (defaults in `data_defaults`):

+ clonefleet_unlocker: this node runs an unlocker (read by `deploys.full`)
+ unlocker_store_url: the shared store as this node reaches it,
  "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" (required)
+ unlocker_config_dir: the identity and the environment file (/etc/clonefleet-unlockd)
+ unlocker_interval: seconds between passes
+ unlocker_loopback_as: where the node reaches addresses recorded on the controller's
  loopback ("" for none; a lab VM's: qemu's "10.0.2.2")
+ clonefleet_offline: a root filesystem without running systemd (see `deploys.base`)

**Examples:**

    add_deploy(state, unlocker, unlocker_store_url="etcd://10.66.0.1:2379/clonefleet/prod")
"""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from clonefleet.services.unlocker import IDENTITY_OPERATION, make_identity_command
from deploys._archive import packages_folder
from deploys._paths import template
from deploys._systemd import daemon_reload, offline
from deploys._systemd import unit as systemd_unit

# Debian's packages for what clonefleet's unlocker mode imports (apprise brings yaml and
# markdown; python3-futurist and python3-pbr are etcd3gw's; cryptography, bcrypt and nacl
# paramiko's). openssh-client makes the identity.
PACKAGES = ["python3", "python3-click", "python3-rich", "python3-requests", "apprise",
            "python3-cryptography", "python3-bcrypt", "python3-nacl", "python3-futurist",
            "python3-pbr", "openssh-client"]
# Sent from the controller (its own installed versions): distribution → import package.
SHIPPED = {"paramiko": "paramiko", "etcd3gw": "etcd3gw", "pyrage": "pyrage"}
CODE_DIR = "/opt/clonefleet-unlockd"
UNIT = "clonefleet-unlockd.service"


def code_sources() -> list[tuple[str, str]]:
    """(name under lib, local folder) of everything shipped: clonefleet, smartwatch, and
    each package in `SHIPPED` with its `.dist-info` (paramiko reads its version from it)."""
    import clonefleet
    import smartwatch

    # smartwatch: its apprise sender delivers unlockd's alerts (smartwatch.notify: apprise
    # and the standard library only, no pySMART).
    sources = [(package.__name__, str(Path(str(package.__file__)).resolve().parent))
               for package in (clonefleet, smartwatch)]
    for distribution, package in SHIPPED.items():
        found = metadata.distribution(distribution)
        info = next(part.parts[0] for part in found.files or ()
                    if part.parts[0].endswith(".dist-info"))
        module = importlib.import_module(package)
        sources.append((package, str(Path(module.__file__).resolve().parent)))
        sources.append((info, str(Path(str(found.locate_file(info))).resolve())))
    return sources


@operation()
def identity(path: str, comment: str):  # type: ignore[no-untyped-def]
    """
    An unencrypted OpenSSH ed25519 key at `path` (0600) and `path`.pub, made on the node
    when absent; an existing key is never replaced (its .pub is made again if missing).
    `clonefleet deploy` runs the same command before the deploy for a node not granted yet
    (`clonefleet.services.unlocker.before_deploy`), so this step then finds the key there.

    + path: the private key file on the node
    + comment: the public line's comment
    """
    if host.get_fact(File, path=path) is not None \
            and host.get_fact(File, path=f"{path}.pub") is not None:
        host.noop(f"{path} exists")
        return
    yield make_identity_command(path, comment)


@deploy("clonefleet unlocker", data_defaults={
    "clonefleet_unlocker": False,
    "unlocker_store_url": "",
    "unlocker_config_dir": "/etc/clonefleet-unlockd",
    "unlocker_interval": 15,
    "unlocker_loopback_as": "",
})
def unlocker() -> None:
    store_url = host.data.unlocker_store_url
    if not store_url.startswith("etcd://"):
        raise ValueError(f"unlocker_store_url {store_url!r} is not an etcd address: set "
                         "[unlock] store_url (or [fleet] state) in the fleet file, or the host "
                         "data unlocker_store_url = 'etcd://HOST:PORT/PREFIX'")
    installed = host.get_fact(DebPackages)
    if any(package not in installed for package in PACKAGES):
        # The node image has them all (clonefleet.image.base); a node from elsewhere may
        # not, and has no package lists: fetch them only when needed.
        apt.update(name="apt package lists (for the unlocker's packages)")
    apt.packages(name="unlocker needs (Debian packages)", packages=PACKAGES)

    files.directory(name="unlocker code folder", path=CODE_DIR, mode="755")
    code = packages_folder(name="unlocker code", dest=f"{CODE_DIR}/lib",
                           sources=code_sources())
    command = files.put(name="unlocker command", src=template("unlocker/clonefleet-unlockd.sh"),
                        dest="/usr/local/bin/clonefleet-unlockd", mode="755")

    config_dir = host.data.unlocker_config_dir
    files.directory(name="unlocker config folder", path=config_dir, mode="700")
    # Named as `clonefleet deploy` looks for it before it reads the public key.
    identity(name=IDENTITY_OPERATION, path=f"{config_dir}/identity",
             comment=f"unlocker@{host.data.get('clonefleet_hostname') or host.name}")
    environment = files.template(name="unlocker store address",
                                 src=template("unlocker/unlocker.env.j2"),
                                 dest=f"{config_dir}/unlocker.env", mode="600",
                                 store_url=store_url,
                                 loopback_as=host.data.unlocker_loopback_as)
    unit_file = files.template(name=f"systemd unit {UNIT}",
                               src=template("unlocker/clonefleet-unlockd.service.j2"),
                               dest=f"/etc/systemd/system/{UNIT}", mode="644",
                               node=host.data.get("clonefleet_hostname") or host.name,
                               config_dir=config_dir,
                               interval=host.data.unlocker_interval)
    daemon_reload("systemd reload (unlocker)", unit_file.did_change)
    systemd_unit(f"{UNIT} enabled and running", UNIT)
    if not offline():
        # Only a unit that was running before this deploy is restarted (a new one was just
        # started with the new code); SIGTERM lets its current pass end.
        changed = (code, command, environment, unit_file)
        systemd.service(name=f"{UNIT} restarted with the new code or settings", service=UNIT,
                        restarted=True, _if=lambda: any(op.did_change() for op in changed))


def unlocker_removed() -> None:
    """On a node no longer in `[unlock] unlockers`: the service stopped and gone with its
    identity (the controller revokes the key, `clonefleet.services.unlocker`); nothing at all
    on a node that never ran one."""
    if host.get_fact(File, path=f"/etc/systemd/system/{UNIT}") is None:
        return
    if offline():
        server.shell(name=f"{UNIT} disabled", commands=[f"systemctl disable {UNIT}"])
    else:
        systemd.service(name=f"{UNIT} stopped", service=UNIT, running=False, enabled=False)
    files.file(name=f"systemd unit {UNIT} removed", path=f"/etc/systemd/system/{UNIT}",
               present=False)
    config_dir = host.data.get("unlocker_config_dir") or "/etc/clonefleet-unlockd"
    files.directory(name="unlocker identity removed", path=config_dir, present=False)
    files.directory(name="unlocker code removed", path=CODE_DIR, present=False)
    files.file(name="unlocker command removed", path="/usr/local/bin/clonefleet-unlockd",
               present=False)
