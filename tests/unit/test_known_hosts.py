"""The fleet's known_hosts file: OpenSSH format with port-qualified entries, one key per
address, a node's entries replaced as a whole, and no entry lost to concurrent writers."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from clonefleet.errors import ConfigError
from clonefleet.known_hosts import HostKeyEntry, KnownHosts, fleet_known_hosts, parse_line
from clonefleet.ssh import generate_ed25519

pytestmark = pytest.mark.unit


def key() -> str:
    return generate_ed25519().public_line


def sshd(node: str, port: int, public: str, host: str = "127.0.0.1") -> HostKeyEntry:
    return HostKeyEntry(node, "sshd", host, port, public)


def dropbear(node: str, port: int, public: str) -> HostKeyEntry:
    return HostKeyEntry(node, "dropbear", "127.0.0.1", port, public)


def paramiko_keys(path: Path, pattern: str) -> list[str]:
    """What paramiko (and so pyinfra) finds for an address in the file."""
    table = paramiko.HostKeys(str(path))
    found = table.lookup(pattern)
    return [] if found is None else [f"{name} {found[name].get_base64()}" for name in found]


def openssh_finds(path: Path, pattern: str) -> list[str]:
    """What OpenSSH's own ssh-keygen -F finds for an address in the file."""
    shown = subprocess.run(["ssh-keygen", "-F", pattern, "-f", str(path)],
                           capture_output=True, text=True, timeout=30, check=False).stdout
    return [line for line in shown.splitlines() if line and not line.startswith("#")]


def test_nodes_on_one_address_with_different_ports_each_get_their_own_entry(
        tmp_path: Path) -> None:
    known_hosts = fleet_known_hosts(tmp_path)
    keys = {name: (key(), key()) for name in ("fsn-1", "fsn-2", "ash-1")}
    for index, (name, (ssh_key, dropbear_key)) in enumerate(sorted(keys.items())):
        known_hosts.replace_node(name, [sshd(name, 10022 + index, ssh_key),
                                        dropbear(name, 12222 + index, dropbear_key)])

    assert known_hosts.path == tmp_path / "known_hosts"
    assert len(known_hosts.entries()) == 6
    for index, (name, (ssh_key, dropbear_key)) in enumerate(sorted(keys.items())):
        for port, public in ((10022 + index, ssh_key), (12222 + index, dropbear_key)):
            pattern = f"[127.0.0.1]:{port}"
            assert paramiko_keys(known_hosts.path, pattern) == [public]
            [line] = openssh_finds(known_hosts.path, pattern)
            assert line.startswith(f"{pattern} {public} clonefleet:{name}:")
            assert known_hosts.keys_for("127.0.0.1", port) == [public]


def test_port_22_is_written_as_a_bare_host_as_openssh_does(tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    public = key()
    known_hosts.replace_node("fsn-1", [sshd("fsn-1", 22, public, host="203.0.113.7")])
    assert known_hosts.path.read_text() == f"203.0.113.7 {public} clonefleet:fsn-1:sshd\n"
    assert paramiko_keys(known_hosts.path, "203.0.113.7") == [public]
    assert parse_line(known_hosts.path.read_text().strip()) == sshd("fsn-1", 22, public,
                                                                    host="203.0.113.7")


def test_replacing_one_nodes_keys_leaves_the_others_and_drops_its_old_ones(
        tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    old, other = key(), key()
    known_hosts.replace_node("fsn-1", [sshd("fsn-1", 10022, old), dropbear("fsn-1", 12222,
                                                                           key())])
    known_hosts.replace_node("fsn-2", [sshd("fsn-2", 10023, other)])

    new = key()
    assert known_hosts.replace_node("fsn-1", [sshd("fsn-1", 10022, new)])

    assert {(entry.node, entry.port, entry.key) for entry in known_hosts.entries()} == {
        ("fsn-1", 10022, new), ("fsn-2", 10023, other)}
    assert paramiko_keys(known_hosts.path, "[127.0.0.1]:10022") == [new]
    assert openssh_finds(known_hosts.path, "[127.0.0.1]:12222") == []


def test_pinning_the_same_keys_again_does_not_rewrite_the_file(tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    entries = [sshd("fsn-1", 10022, key())]
    assert known_hosts.replace_node("fsn-1", entries)
    written = known_hosts.path.stat().st_mtime_ns
    assert not known_hosts.replace_node("fsn-1", entries)
    assert known_hosts.path.stat().st_mtime_ns == written


def test_an_address_another_node_had_is_taken_over_by_the_new_pin(tmp_path: Path) -> None:
    # A retired lab node's forwarded port given to a new node: one address, one key.
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    known_hosts.replace_node("old-1", [sshd("old-1", 10022, key()), dropbear("old-1", 12222,
                                                                             key())])
    new = key()
    known_hosts.replace_node("new-1", [sshd("new-1", 10022, new)])
    assert [(entry.node, entry.port) for entry in known_hosts.entries()] == [
        ("new-1", 10022), ("old-1", 12222)]
    assert paramiko_keys(known_hosts.path, "[127.0.0.1]:10022") == [new]


def test_untagged_lines_of_earlier_versions_are_replaced_and_foreign_ones_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    stale, foreign = key(), key()
    # What clonefleet wrote before entries were tagged, and an operator's own line.
    path.write_text(f"[127.0.0.1]:10022 {stale}\n# a comment\n"
                    f"example.org {foreign} someone@laptop\n")
    known_hosts = KnownHosts(path)
    pinned = key()
    known_hosts.replace_node("fsn-1", [sshd("fsn-1", 10022, pinned)])
    assert path.read_text() == (f"# a comment\nexample.org {foreign} someone@laptop\n"
                                f"[127.0.0.1]:10022 {pinned} clonefleet:fsn-1:sshd\n")


def test_forgetting_a_node_removes_only_its_entries(tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    kept = key()
    known_hosts.replace_node("fsn-1", [sshd("fsn-1", 10022, key())])
    known_hosts.replace_node("fsn-2", [sshd("fsn-2", 10023, kept)])
    assert known_hosts.forget_node("fsn-1")
    assert known_hosts.entries() == [sshd("fsn-2", 10023, kept)]
    assert not known_hosts.forget_node("fsn-1")


def test_an_entry_needs_a_bare_public_key_and_plain_names() -> None:
    with pytest.raises(ConfigError):
        sshd("fsn-1", 10022, key() + " root@fsn-1")  # callers strip the comment
    with pytest.raises(ConfigError):
        HostKeyEntry("fsn:1", "sshd", "127.0.0.1", 10022, key())


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    known_hosts = KnownHosts(tmp_path / "known_hosts")
    nodes = [f"lab-{index}" for index in range(12)]
    final: dict[str, tuple[str, str]] = {}
    start = threading.Barrier(len(nodes))
    errors: list[BaseException] = []

    def provision(index: int, node: str) -> None:
        try:
            start.wait()
            # Like a provision: rescue-era pin, then reinstall keys, each rewrite racing
            # the other nodes' (each thread with its own KnownHosts, like separate Provisioners).
            mine = KnownHosts(known_hosts.path)
            for _ in range(5):
                keys = (key(), key())
                mine.replace_node(node, [sshd(node, 10022 + index, keys[0]),
                                         dropbear(node, 12222 + index, keys[1])])
            final[node] = keys
        except BaseException as error:  # surfaced below: a thread's failure must fail the test
            errors.append(error)

    threads = [threading.Thread(target=provision, args=(index, node))
               for index, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    entries = known_hosts.entries()
    assert len(entries) == 2 * len(nodes)
    for index, node in enumerate(nodes):
        assert paramiko_keys(known_hosts.path, f"[127.0.0.1]:{10022 + index}") == \
            [final[node][0]]
        assert paramiko_keys(known_hosts.path, f"[127.0.0.1]:{12222 + index}") == \
            [final[node][1]]
    # Renamed into place: no temporary file is left beside it.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["known_hosts",
                                                                 "known_hosts.lock"]
    assert known_hosts.path.stat().st_mode & 0o777 == 0o644
