"""Run commands inside a root filesystem folder on the controller."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from clonefleet.errors import InstallError

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


def run(argv: Sequence[str], *, what: str, input_bytes: bytes | None = None,
        env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Run a host command; on failure raise InstallError naming `what` with the output tail."""
    result = subprocess.run(
        list(argv), input=input_bytes, capture_output=True, env=env, timeout=timeout
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise InstallError(f"{what} failed (exit {result.returncode}): {tail}")
    return result.stdout.decode(errors="replace")


@contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """Bind /proc, /sys and /dev into `root` for the duration; always unmount."""
    with ExitStack() as stack:
        for name in ("proc", "sys", "dev"):
            target = root / name
            target.mkdir(exist_ok=True)
            run(["mount", "--bind", f"/{name}", str(target)], what=f"bind-mount /{name}")
            stack.callback(unmount, target)
        yield root


def unmount(path: Path) -> None:
    """Unmount `path` (lazily: whatever still holds it lets go later); errors are ignored."""
    subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def in_chroot(root: Path, command: str, *, what: str, timeout: float = 1800) -> str:
    return run(["chroot", str(root), "/bin/sh", "-c", command], what=what,
               env=CHROOT_ENV, timeout=timeout)


@contextmanager
def overlay(lower: Path, workdir: Path) -> Iterator[tuple[Path, Path]]:
    """Mount an overlayfs of `lower` (read-only) with a fresh upper layer under `workdir`.

    Yields (merged, upper): write to `merged`, find exactly what changed in `upper`.
    """
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
        what="overlay mount")
    try:
        yield merged, upper
    finally:
        unmount(merged)
