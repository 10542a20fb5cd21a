"""A rescue system's host key is pinned to the fingerprints the provider's API reported.

Against a real Dropbear on loopback; the fingerprints are computed by OpenSSH's own
`ssh-keygen -l`, in the two forms provider APIs use (SHA256 and MD5)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dropbear_fixture import Dropbear, dropbear_available, running_dropbear

from clonefleet.errors import HostKeyMismatchError
from clonefleet.ssh import RemoteShell, generate_ed25519, key_fingerprints, normalize_fingerprint

pytestmark = pytest.mark.integration


@pytest.fixture
def dropbear(tmp_path: Path) -> Iterator[Dropbear]:
    if os.geteuid() != 0:
        pytest.fail("the Dropbear tests need root (a private mount namespace)")
    if not dropbear_available():
        pytest.fail("dropbear is missing; run scripts/setup (package dropbear-bin)")
    with running_dropbear(tmp_path / "dropbear") as server:
        yield server


def openssh_fingerprint(public_line: str, folder: Path, kind: str) -> str:
    path = folder / "key.pub"
    path.write_text(public_line + "\n")
    shown = subprocess.run(["ssh-keygen", "-l", "-E", kind, "-f", str(path)], check=True,
                           capture_output=True, text=True).stdout
    return shown.split()[1]  # "256 SHA256:xxx comment (ED25519)"


def connect(server: Dropbear, host_keys: tuple[str, ...]) -> RemoteShell:
    return RemoteShell(replace(server.access, host_keys=host_keys), server.operator_key,
                       pinned=None, what="test rescue system", timeout=10)


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_a_rescue_key_matching_the_reported_fingerprint_is_accepted(
        dropbear: Dropbear, tmp_path: Path, kind: str) -> None:
    fingerprint = openssh_fingerprint(dropbear.host_key, tmp_path, kind)
    with connect(dropbear, ("ssh-rsa SHA256:notthisone", fingerprint)) as shell:
        assert shell.seen_keys == [dropbear.host_key]
        assert shell.host_key_fingerprint.endswith(
            openssh_fingerprint(dropbear.host_key, tmp_path, "sha256"))


def test_a_rescue_key_matching_no_reported_fingerprint_is_refused(
        dropbear: Dropbear, tmp_path: Path) -> None:
    other = openssh_fingerprint(generate_ed25519().public_line, tmp_path, "sha256")
    with pytest.raises(HostKeyMismatchError) as caught:
        connect(dropbear, (other,))
    message = str(caught.value)
    assert "none of the fingerprints the provider's API reported" in message
    assert other in message and "\n" not in message and caught.value.exit_code == 8


def test_without_reported_fingerprints_the_rescue_key_is_trusted_on_first_use(
        dropbear: Dropbear) -> None:
    with connect(dropbear, ()) as shell:
        assert shell.seen_keys == [dropbear.host_key]


def test_fingerprints_are_compared_in_one_form() -> None:
    sha, md5 = key_fingerprints(b"key bytes")
    assert normalize_fingerprint(f"ED25519 {sha}=") == sha
    assert normalize_fingerprint(md5.upper().replace("MD5:", "md5:")) == md5
    assert normalize_fingerprint(md5.removeprefix("MD5:").upper()) == md5
