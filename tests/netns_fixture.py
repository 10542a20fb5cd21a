"""Network namespaces a test creates for itself and always removes: never the machine's own.

    with namespaces(3) as names:            # ["cfm-<pid>-0", ...]
        run_in(names[0], "ip", "link", "show")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"cfm-probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
    if created.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return True


def run_in(namespace: str, *command: str, timeout: float = 20,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True,
                          text=True, timeout=timeout, check=check)


@contextmanager
def namespaces(count: int, prefix: str = "cfm") -> Iterator[list[str]]:
    names = [f"{prefix}-{os.getpid()}-{index}" for index in range(count)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True,
                           timeout=10)
            run_in(name, "ip", "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            # Deleting a namespace kills its interfaces (veth ends, wg); processes in it are
            # the caller's to stop.
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
