"""etcd v3 state store: the same `StateStore` on a cluster several controllers share.

Invariant: every write is one etcd transaction guarded by the revisions of what it read, so
nothing is ever read-then-written unguarded and nothing is ever half-applied. A single
operation (a transition, a DNS serial, a fact) retries its own read-check-write until its
guard holds; a `transaction()` block cannot be re-run, so it buffers its writes, commits them
in one etcd transaction, and raises `StateConflict` (nothing written) if its guard fails.
Writers wait for each other like SQLite writers: blocks take a store-wide lock, and a single
operation's write succeeds only while no block holds it (else it waits for the block to end
and tries again), so a block's guard fails only when its lock was lost (its holder cut off
from the cluster for longer than `LOCK_TTL`) or a writer ignored it.
Locks and leases are etcd leases: a crashed holder's lock frees itself after `LOCK_TTL`.

Talks to etcd's JSON gateway (`/v3/`, etcd >= 3.4) through `etcd3gw`'s HTTP client; keys
and values are sent as UTF-8 bytes (etcd3gw's own helpers would encode text as latin-1).
Key layout: docs/state.md.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from clonefleet.errors import LeaseHeld, LeaseLost, StateConflict, StateError, StateUnavailable
from clonefleet.retry import RetryPolicy, TimedOut, wait_until
from clonefleet.state.config import StateConfig
from clonefleet.state.model import (
    DnsServerRecord,
    HealthCheck,
    Lease,
    LifecycleWrites,
    NodeRecord,
    StateCheck,
    StepRecord,
    Transition,
    check_name,
)

T = TypeVar("T")
LOG = logging.getLogger(__name__)

LOCK_POLL = RetryPolicy(first=0.02, cap=0.05, factor=1.5, jitter=0.3)
# A lock's etcd lease: renewed every third of it while held, so a holder that dies (or is cut
# off from the cluster) frees the lock after at most this long.
LOCK_TTL = 10
# Writers' `transaction()` blocks wait for each other at most this long (SQLite's busy
# timeout is 30 s too).
TRANSACTION_LOCK_SECONDS = 30.0
# A single operation whose guard keeps failing: this many tries means a write storm.
CAS_ATTEMPTS = 200
# etcd refuses a transaction with more than 128 compares (--max-txn-ops); above this many
# single-key guards, keys of one folder are guarded by one range compare instead.
MAX_KEY_GUARDS = 64
# Sorts a key written in the open transaction after every stored one.
PENDING = 1 << 62


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _load(data: bytes) -> Any:
    return json.loads(data.decode())


@dataclass(frozen=True)
class _KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _key_values(response: dict[str, Any]) -> list[_KeyValue]:
    return [_KeyValue(_unb64(item["key"]), _unb64(item.get("value", "")),
                      int(item.get("create_revision", 0)), int(item.get("mod_revision", 0)),
                      int(item.get("lease", 0)))
            for item in response.get("kvs", [])]


class _Cluster:
    """The endpoints of one cluster: one HTTP client per thread and endpoint; reads move on
    to the next endpoint when one does not answer, writes never re-send (a write whose
    answer was lost may have been applied: the caller is told so)."""

    def __init__(self, config: StateConfig) -> None:
        if not config.endpoints:
            raise StateError("the etcd state store needs at least one endpoint; set "
                             "[state] endpoints or [fleet] state = 'etcd://HOST:PORT/PREFIX'")
        self.config = config
        self._local = threading.local()
        self._current = 0

    def _client(self, endpoint: str) -> Etcd3Client:
        clients: dict[str, Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if endpoint not in clients:
            parts = urlsplit(endpoint)
            config = self.config
            clients[endpoint] = Etcd3Client(
                host=(parts.hostname or "127.0.0.1"), port=parts.port or 2379,
                protocol=parts.scheme, ca_cert=config.ca_cert or None,
                cert_key=config.key or None, cert_cert=config.cert or None,
                timeout=config.timeout, api_path="/v3/")
        return clients[endpoint]

    def post(self, path: str, body: dict[str, Any], *, what: str, resend: bool) -> Any:
        endpoints = self.config.endpoints
        tries = len(endpoints) if resend else 1
        last = ""
        for _ in range(tries):
            endpoint = endpoints[self._current % len(endpoints)]
            client = self._client(endpoint)
            try:
                return client.post(client.get_url(path), data=json.dumps(body))
            except (ConnectionFailedError, ConnectionTimeoutError) as error:
                last = f"{endpoint}: {str(error) or type(error).__name__}"
                self._current += 1  # the next call starts at the next member
            except Etcd3Exception as error:
                detail = (error.detail_text or str(error)).strip().replace("\n", " ")
                raise StateError(f"etcd at {endpoint} refused {what}: {detail[:300]}") from None
        if not resend:
            raise StateUnavailable(
                f"etcd did not answer {what} ({last}); it may or may not have been applied: "
                "check with `clonefleet status` and run the command again") from None
        raise StateUnavailable(f"no etcd endpoint answered {what} ({last}); check the cluster "
                               "and the fleet file's state endpoints") from None

    def range(self, key: bytes, end: bytes | None = None) -> tuple[list[_KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        response = self.post("kv/range", body, what="a read", resend=True)
        return _key_values(response), int(response["header"]["revision"])

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None, *, what: str) -> dict[str, Any]:
        body = {"compare": compare, "success": success, "failure": failure or []}
        response: dict[str, Any] = self.post("kv/txn", body, what=what, resend=False)
        return response

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease: (id, TTL granted; etcd raises a TTL below its minimum)."""
        response = self.post("lease/grant", {"TTL": ttl, "ID": 0}, what="a lease grant",
                             resend=False)
        return int(response["ID"]), int(response["TTL"])

    def keepalive(self, lease: int) -> int:
        """Renew an etcd lease; its TTL, or -1 when it has expired."""
        response = self.post("lease/keepalive", {"ID": lease}, what="a lease renewal",
                             resend=True)
        return int(response.get("result", {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> int:
        """Seconds an etcd lease has left: -1 once it is gone, 0 while it is expiring (etcd
        deletes its keys up to a second or so later, and a renewal in that window wins)."""
        response = self.post("kv/lease/timetolive", {"ID": lease}, what="a lease read",
                             resend=True)
        return int(response.get("TTL", 0))  # the gateway leaves a 0 out

    def revoke(self, lease: int) -> bool:
        """True once the lease is gone (revoked now, or expired already)."""
        try:
            self.post("kv/lease/revoke", {"ID": lease}, what="a lease revoke", resend=True)
        except StateUnavailable:
            return False  # it expires by itself, or `revoke_soon` tries again
        except StateError:
            return True  # etcd no longer knows it: expired
        return True

    def revoke_soon(self, lease: int) -> None:
        """Revoke now, or keep trying in the background for a while: a restarted etcd
        restores every lease with its full TTL, so a lock whose release was lost while the
        cluster was down would otherwise stay held that long after it came back."""
        if self.revoke(lease):
            return

        def retry() -> None:
            deadline = time.monotonic() + 3 * LOCK_TTL
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if self.revoke(lease):
                    return

        threading.Thread(target=retry, name=f"etcd-revoke-{lease}", daemon=True).start()


def _put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def _not_exists(key: bytes) -> dict[str, Any]:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def _wait_for_lock(check: Callable[[], bool | None], what: str, key: bytes, timeout: float,
                   allowed: float) -> None:
    """Poll `check` (the lock `key` taken, or freed) until it returns True; after `timeout`
    seconds `StateError` naming `what`, its key and `allowed` (the whole wait allowed)."""
    try:
        wait_until(check, what=what, timeout=timeout, policy=LOCK_POLL,
                   transient=lambda error: False)
    except TimedOut:
        raise StateError(f"{what} (etcd key {key.decode()}) still held after {allowed:.0f} s; "
                         "another clonefleet process is working, retry later") from None


class _Reader:
    """Reads straight from the cluster (outside any transaction): no guards recorded."""

    def __init__(self, cluster: _Cluster) -> None:
        self.cluster = cluster

    def get(self, key: bytes) -> bytes | None:
        values, _ = self.cluster.range(key)
        return values[0].value if values else None

    def items(self, prefix: bytes) -> list[tuple[bytes, bytes, int]]:
        """(key, value, create revision) of every key under `prefix`, by key."""
        values, _ = self.cluster.range(prefix, _range_end(prefix))
        return [(item.key, item.value, item.create_revision) for item in values]


class _Transaction(_Reader):
    """Reads that remember what they saw, writes kept until `commit`."""

    def __init__(self, cluster: _Cluster) -> None:
        super().__init__(cluster)
        self.key_guards: dict[bytes, tuple[int, int]] = {}  # key → (mod revision, read at)
        self.range_guards: list[tuple[bytes, bytes, int]] = []  # (start, end, read at)
        self.writes: dict[bytes, bytes | None] = {}  # None: delete
        self.sequence = 0

    def next_sequence(self) -> int:
        """Orders the records one transaction appends (they share one etcd revision)."""
        self.sequence += 1
        return self.sequence

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        values, revision = self.cluster.range(key)
        self.key_guards.setdefault(key, (values[0].mod_revision if values else 0, revision))
        return values[0].value if values else None

    def items(self, prefix: bytes) -> list[tuple[bytes, bytes, int]]:
        end = _range_end(prefix)
        values, revision = self.cluster.range(prefix, end)
        self.range_guards.append((prefix, end, revision))
        found = {item.key: (item.value, item.create_revision) for item in values}
        for key, value in self.writes.items():
            if prefix <= key < end:
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = (value, found.get(key, (b"", PENDING))[1])
        return [(key, value, created) for key, (value, created) in sorted(found.items())]

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def _compares(self) -> list[dict[str, Any]]:
        ranges = list(self.range_guards)
        keys = dict(self.key_guards)
        if len(keys) > MAX_KEY_GUARDS:
            # One range compare per folder, at the earliest read there: stricter than the
            # key compares it replaces (it can only add conflicts, never miss one).
            folders: dict[bytes, list[bytes]] = {}
            for key in keys:
                folders.setdefault(key[:key.rfind(b"/") + 1], []).append(key)
            for folder, members in folders.items():
                if len(members) > 1:
                    read_at = min(keys.pop(member)[1] for member in members)
                    ranges.append((folder, _range_end(folder), read_at))
        compares = [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod}
                    for key, (mod, _) in keys.items()]
        compares += [{"key": _b64(start), "range_end": _b64(end), "target": "MOD",
                      "result": "LESS", "mod_revision": read_at + 1}
                     for start, end, read_at in ranges]
        return compares

    def commit(self, what: str, unless_held: bytes | None = None) -> tuple[bool, bool]:
        """Write everything at once if nothing read has changed since and, given
        `unless_held`, no one holds that lock key: (written, whether the lock was held)."""
        if not self.writes:
            return True, False
        operations = [_put(key, value) if value is not None
                      else {"request_delete_range": {"key": _b64(key)}}
                      for key, value in self.writes.items()]
        compares = self._compares()
        failure = []
        if unless_held is not None:
            compares.append(_not_exists(unless_held))
            failure = [{"request_range": {"key": _b64(unless_held)}}]
        response = self.cluster.txn(compares, operations, failure, what=what)
        if response.get("succeeded"):
            return True, False
        held = unless_held is not None and bool(
            _key_values(response["responses"][0]["response_range"]))
        return False, held


class EtcdStateStore(LifecycleWrites):
    """Given a cluster and a key prefix, keep node states, history, facts, step timings,
    health checks, DNS serials, locks and leases there."""

    def __init__(self, config: StateConfig, fleet: str, *, lock_ttl: int = LOCK_TTL) -> None:
        self.config = config
        self.lock_ttl = lock_ttl
        self.prefix = config.key_prefix(fleet).encode()
        self.cluster = _Cluster(config)
        self._mutex = self._key("mutex", "transaction")  # held by `transaction()` blocks
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"EtcdStateStore({','.join(self.config.endpoints)}, {self.prefix.decode()!r})"

    def _key(self, *parts: str) -> bytes:
        return self.prefix + "/".join(parts).encode()

    def _open(self) -> _Transaction | None:
        transaction: _Transaction | None = getattr(self._local, "transaction", None)
        return transaction

    def _reader(self) -> _Reader:
        return self._open() or _Reader(self.cluster)

    def _atomic(self, work: Callable[[_Transaction], T], what: str) -> T:
        """Run `work` (reads and buffered writes) as one guarded etcd transaction: inside an
        open `transaction()` it joins it; alone it writes only while no block holds the
        transaction lock (waiting for one that does, as a SQLite writer waits) and retries
        until its guard holds. A write between a block's reads and its commit would fail
        that block, which cannot be re-run."""
        outer = self._open()
        if outer is not None:
            return work(outer)
        attempts = 0
        blocks_deadline: float | None = None  # all its waits for blocks together
        while attempts < CAS_ATTEMPTS:
            transaction = _Transaction(self.cluster)
            result = work(transaction)
            written, held = transaction.commit(what, unless_held=self._mutex)
            if written:
                return result
            if held:
                if blocks_deadline is None:
                    blocks_deadline = time.monotonic() + TRANSACTION_LOCK_SECONDS
                self._wait_for_blocks(what, blocks_deadline)
                continue
            attempts += 1
            time.sleep(random.uniform(0, 0.01))  # let the winner's neighbours go first
        raise StateConflict(f"{what}: the keys it reads kept changing ({CAS_ATTEMPTS} tries); "
                            "run the command again")

    def _wait_for_blocks(self, what: str, deadline: float) -> None:
        """Until no `transaction()` block holds the lock; `StateError` at `deadline`
        (time.monotonic()), as long after the first wait as a block waits for another."""

        def free() -> bool | None:
            values, _ = self.cluster.range(self._mutex)
            return True if not values else None

        _wait_for_lock(free, f"{what}: the state transaction lock", self._mutex,
                       max(0.0, deadline - time.monotonic()), TRANSACTION_LOCK_SECONDS)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic read-check-write: reads see this block's own writes; nested blocks join
        the outer one. See the module docstring for what a conflict means."""
        if self._open() is not None:
            yield
            return
        with self._hold(self._mutex, "the state transaction lock", TRANSACTION_LOCK_SECONDS):
            transaction = _Transaction(self.cluster)
            self._local.transaction = transaction
            try:
                yield
            finally:
                self._local.transaction = None
            written, _ = transaction.commit("a state transaction")
            if not written:
                raise StateConflict(
                    "another process changed the state this operation read before it could "
                    "write (this one's hold on the transaction lock lapsed); nothing was "
                    "written: run the command again")

    def close(self) -> None:
        """Nothing to close: HTTP connections are per thread and closed with it."""

    # Nodes and their history.

    def get(self, node: str) -> NodeRecord | None:
        data = self._reader().get(self._key("nodes", node))
        return self._node(node, data) if data is not None else None

    @staticmethod
    def _node(node: str, data: bytes) -> NodeRecord:
        value = _load(data)
        return NodeRecord(node, value["state"], value["since"], value["actor"], value["reason"])

    def all(self) -> list[NodeRecord]:
        prefix = self._key("nodes", "")
        return [self._node(key[len(prefix):].decode(), value)
                for key, value, _ in self._reader().items(prefix)]

    def _write_state(self, node: str, to_state: str, *, actor: str, reason: str,
                     check: StateCheck | None) -> NodeRecord:
        """Read, check and write guarded by the node key's revision; re-read and re-checked
        while another writer wins, so of two moves from the same state exactly one passes."""

        def work(transaction: _Transaction) -> NodeRecord:
            data = transaction.get(self._key("nodes", node))
            from_state = _load(data)["state"] if data is not None else None
            if check is not None:
                check(from_state)
            now = time.time()
            record = NodeRecord(node, to_state, now, actor, reason)
            transaction.put(self._key("nodes", node), _dump(
                {"state": to_state, "since": now, "actor": actor, "reason": reason}))
            transaction.put(self._key("history", node, uuid.uuid4().hex), _dump(
                {"from_state": from_state, "to_state": to_state, "actor": actor,
                 "reason": reason, "at": now, "sequence": transaction.next_sequence()}))
            return record

        return self._atomic(work, f"transition of {node!r} to {to_state}")

    def _records(self, folder: str, node: str | None) -> list[tuple[int, str, dict[str, Any]]]:
        """(id, node, value) of the records appended under `folder`, oldest first. The id
        is the etcd revision that wrote a record, times 1000, plus its place in it."""
        prefix = self._key(folder, node, "") if node is not None else self._key(folder, "")
        records = []
        for key, data, created in self._reader().items(prefix):
            value = _load(data)
            name = key[len(self._key(folder, "")):].split(b"/", 1)[0].decode()
            records.append((created * 1000 + int(value.get("sequence", 0)), name, value))
        records.sort(key=lambda record: record[0])
        return records

    def history(self, node: str | None = None) -> list[Transition]:
        return [Transition(ident, name, value["from_state"], value["to_state"], value["actor"],
                           value["reason"], value["at"])
                for ident, name, value in self._records("history", node)]

    # Facts.

    def set_fact(self, node: str, key: str, value: Any) -> None:
        encoded = _dump(value)
        self._atomic(lambda transaction: transaction.put(self._key("facts", node, key), encoded),
                     f"writing fact {key!r} of {node!r}")

    def get_fact(self, node: str, key: str, default: Any = None) -> Any:
        data = self._reader().get(self._key("facts", node, key))
        return _load(data) if data is not None else default

    def facts(self, node: str) -> dict[str, Any]:
        prefix = self._key("facts", node, "")
        return {key[len(prefix):].decode(): _load(value)
                for key, value, _ in self._reader().items(prefix)}

    def fact_values(self, key: str) -> dict[str, Any]:
        """Every node's value of fact `key` (nodes without it are left out), by node name:
        one range read of all facts (node names hold no "/", so the first one ends it)."""
        prefix = self._key("facts", "")
        values = {}
        for full, value, _ in self._reader().items(prefix):
            node, _, name = full[len(prefix):].decode().partition("/")
            if name == key:
                values[node] = _load(value)
        return dict(sorted(values.items()))

    def delete_fact(self, node: str, key: str) -> None:
        self._atomic(lambda transaction: transaction.delete(self._key("facts", node, key)),
                     f"deleting fact {key!r} of {node!r}")

    def delete_facts(self, node: str) -> None:
        """Forget everything known about a node's machine (it was destroyed)."""
        prefix = self._key("facts", node, "")

        def work(transaction: _Transaction) -> None:
            for key, _, _ in transaction.items(prefix):
                transaction.delete(key)

        self._atomic(work, f"deleting the facts of {node!r}")

    # Steps and health checks: appended records, never rewritten.

    def _append(self, folder: str, node: str, value: dict[str, Any], what: str) -> None:
        def work(transaction: _Transaction) -> None:
            transaction.put(self._key(folder, node, uuid.uuid4().hex),
                            _dump({**value, "sequence": transaction.next_sequence()}))

        self._atomic(work, what)

    def record_step(
        self, node: str, step: str, status: str, seconds: float, detail: str = ""
    ) -> None:
        self._append("steps", node, {"step": step, "status": status, "seconds": seconds,
                                     "at": time.time(), "detail": detail},
                     f"recording step {step!r} of {node!r}")

    def steps(self, node: str) -> list[StepRecord]:
        return [StepRecord(name, value["step"], value["status"], value["seconds"], value["at"],
                           value["detail"]) for _, name, value in self._records("steps", node)]

    def record_health(self, node: str, ok: bool, *, source: str, detail: str = "") -> HealthCheck:
        now = time.time()
        self._append("health", node, {"ok": ok, "source": source, "detail": detail, "at": now},
                     f"recording a health check of {node!r}")
        return HealthCheck(node, ok, source, detail, now)

    def health(self, node: str, limit: int = 1) -> list[HealthCheck]:
        """The node's latest health checks, newest first."""
        records = self._records("health", node)[::-1][:max(0, limit)]
        return [HealthCheck(name, bool(value["ok"]), value["source"], value["detail"],
                            value["at"]) for _, name, value in records]

    # DNS serials and servers.

    def next_dns_serial(self, actor: str, summary: str = "") -> int:
        """Allocate a zone serial above every earlier one (seconds since 1970 when possible):
        a compare-and-swap on the last serial, so concurrent callers never share one."""

        def work(transaction: _Transaction) -> int:
            data = transaction.get(self._key("dns", "serial"))
            last = int(_load(data)) if data is not None else 0
            # Time-based serials stay above what a server was given before the store was
            # recreated; the +1 keeps them strictly increasing within one second.
            serial = max(last + 1, int(time.time()))
            transaction.put(self._key("dns", "serial"), _dump(serial))
            transaction.put(self._key("dns", "publishes", f"{serial:020d}"), _dump(
                {"actor": actor, "at": time.time(), "summary": summary}))
            return serial

        return self._atomic(work, "allocating a DNS serial")

    def last_dns_serial(self) -> int | None:
        data = self._reader().get(self._key("dns", "serial"))
        return int(_load(data)) if data is not None else None

    def record_dns_server(self, node: str, serial: int | None, ok: bool, error: str = "") -> None:
        """Remember the outcome of the latest push to a node's DNS server (a failed push
        keeps the serial the server last accepted)."""
        key = self._key("dns", "servers", node)

        def work(transaction: _Transaction) -> None:
            data = transaction.get(key)
            kept = serial if ok or data is None else _load(data)["serial"]
            transaction.put(key, _dump({"serial": kept, "ok": ok, "error": error,
                                        "at": time.time()}))

        self._atomic(work, f"recording the DNS push to {node!r}")

    def dns_servers(self) -> list[DnsServerRecord]:
        prefix = self._key("dns", "servers", "")
        records = []
        for key, data, _ in self._reader().items(prefix):
            value = _load(data)
            records.append(DnsServerRecord(key[len(prefix):].decode(), value["serial"],
                                           bool(value["ok"]), value["error"], value["at"]))
        return records

    # Locks: held over slow work, outside transactions.

    @contextmanager
    def _hold(self, key: bytes, what: str, timeout: float) -> Iterator[None]:
        """Hold `key` (created with a fresh etcd lease, renewed in the background) for the
        block; `StateError` after `timeout` seconds of someone else holding it."""
        lease, ttl = self.cluster.grant(self.lock_ttl)
        stop = threading.Event()
        try:
            mine = _dump({"lease": lease, "at": time.time()})

            def acquired() -> bool | None:
                response = self.cluster.txn([_not_exists(key)], [_put(key, mine, lease)],
                                            what=f"taking {what}")
                return True if response.get("succeeded") else None

            _wait_for_lock(acquired, what, key, timeout, timeout)

            def renew() -> None:
                while not stop.wait(ttl / 3):
                    try:
                        left = self.cluster.keepalive(lease)
                    except StateError:
                        continue  # the next beat tries again; the lease outlives a few misses
                    if left <= 0:
                        # Cut off from the cluster for longer than the TTL: another process
                        # may hold the lock now. Writes stay safe (they are guarded by
                        # revisions); the work under the lock is no longer exclusive.
                        LOG.warning("%s was lost (its etcd lease expired) while held", what)
                        return

            threading.Thread(target=renew, name=f"etcd-lease-{lease}", daemon=True).start()
            yield
        finally:
            stop.set()
            self.cluster.revoke_soon(lease)  # deletes the key with it

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """A named lock across processes and controllers, held over slow work outside a
        transaction. Raises `StateError` after `timeout` seconds."""
        if not name.replace("-", "").isalnum():
            raise StateError(f"invalid lock name {name!r}; use letters, digits and '-'")
        with self._hold(self._key("locks", name), f"lock {name!r}", timeout):
            yield

    # Leases: claims with a time to live that the holder renews (unlockers, per node boot).

    def take_lease(self, name: str, holder: str, ttl: float) -> Lease:
        """Take the lease `name` for `ttl` seconds (whole seconds in etcd, at least the
        cluster's minimum); `LeaseHeld` while another holder has it. Taking one's own lease
        again renews it."""
        check_name(name, "lease")
        if not ttl > 0:
            raise StateError(f"lease {name!r}: ttl must be more than 0 seconds, got {ttl:g}")
        key = self._key("leases", name)
        lease, granted = self.cluster.grant(math.ceil(ttl))
        value = _dump({"holder": holder, "ttl": ttl, "lease": lease})
        response = self.cluster.txn([_not_exists(key)], [_put(key, value, lease)],
                                    [{"request_range": {"key": _b64(key)}}],
                                    what=f"taking lease {name!r}")
        if response.get("succeeded"):
            return Lease(name, holder, ttl, time.time() + granted)
        self.cluster.revoke(lease)
        found = _key_values(response["responses"][0]["response_range"])
        current = _load(found[0].value) if found else None
        if current is not None and current["holder"] == holder:
            return self.renew_lease(name, holder)
        if current is None:  # expired between the compare and the read: try once more
            return self.take_lease(name, holder, ttl)
        left = self.cluster.time_to_live(int(current["lease"]))
        raise LeaseHeld(f"lease {name!r} is held by {current['holder']!r} for another "
                        f"{max(0, left)} s")

    def _current(self, name: str) -> dict[str, Any] | None:
        data = _Reader(self.cluster).get(self._key("leases", check_name(name, "lease")))
        return _load(data) if data is not None else None

    def renew_lease(self, name: str, holder: str) -> Lease:
        """Extend `holder`'s lease by its TTL; `LeaseLost` if it expired or is not theirs."""
        current = self._current(name)
        left = -1
        if current is not None and current["holder"] == holder:
            left = self.cluster.keepalive(int(current["lease"]))
        if left <= 0:
            raise LeaseLost(f"lease {name!r} is no longer held by {holder!r} (expired or "
                            "taken over); stop acting on it and take it again")
        assert current is not None
        return Lease(name, holder, float(current["ttl"]), time.time() + left)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give up `holder`'s lease; False when it was not theirs (expired, or never taken).
        Revoking the etcd lease deletes the key with it, and only this taking's key."""
        current = self._current(name)
        if current is None or current["holder"] != holder:
            return False
        return self.cluster.revoke(int(current["lease"]))

    def lease(self, name: str) -> Lease | None:
        """The unexpired lease `name`, or None."""
        current = self._current(name)
        if current is None:
            return None
        left = self.cluster.time_to_live(int(current["lease"]))
        if left < 0:
            return None
        return Lease(name, current["holder"], float(current["ttl"]), time.time() + left)
