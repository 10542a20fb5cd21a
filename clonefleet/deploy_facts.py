"""Ask a node about its state fewer times during a deploy, without trusting anything stale.

pyinfra 3 runs each operation's body twice on a real run: once while the deploy is prepared
(to learn whether it would change something) and once more when it executes (because an
earlier operation may have changed the node since). Every fact an operation reads is a
command on the node, and pyinfra 3 keeps no cache, so a deploy that changes nothing still
reads every file's state twice, and the same folder's state many times. On an emulated lab
node a fact costs about a quarter of a second; the full-clone deploy reads some 180 of them
in each phase.

An answer holds until a command runs on the node. From that one rule:

- While a deploy is prepared nothing runs on the node, so each fact with the same arguments
  is read once (`facts_read_once`), and so are the facts the node's last deploy read, all in
  one command before the preparation starts (`read_in_one_go`, from a `FactList`).
- While it executes, answers are kept until the next command is handed to the node
  (`reuse_at_execution` counts them); a fact asked after that is read again, together with
  the facts the next operations asked while prepared, up to the next operation that will
  run a command, in one command.
- An operation that found nothing to do while prepared still has nothing to do as long as
  no earlier operation on that node has run a command: it is not even run again then.

Read in one go, pyinfra's file facts (File, Link, Directory: a `stat` process per path, some
50 ms each on an emulated node) become one `stat` over every path (`stat_script`), each path
given the very line pyinfra's own command prints for it alone; only facts whose command is
exactly pyinfra's stat command for a plain path go that way.

The list of a node's facts (kept in the fleet's state folder: fact names and arguments, never
answers) follows what each deploy asked, so a changed deploy corrects it by its next run. A
fact that cannot be read together with others (one needing another shell or user, a
precondition, a command that must exist first, an error) is read on its own as before, with
pyinfra's own handling. A node layer's offline deploy (`clonefleet.image.bake`) lists its
facts too, so the node's first deploy over SSH already starts from that list.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import secrets
import shlex
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# How long the one command reading every listed fact may take (it is one `stat` or
# `sha1sum` or so per fact: a couple of hundred short commands).
READ_TIMEOUT = 300

Key = tuple[Any, str]  # (fact class, its arguments as JSON or repr)


def _key(fact: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Key, bool]:
    """The key of one fact reading, and whether it can be listed (plain JSON arguments and
    no pyinfra global argument such as `_sudo`)."""
    try:
        text = json.dumps([list(args), kwargs], sort_keys=True)
    except (TypeError, ValueError):
        return (fact, repr((args, sorted(kwargs.items())))), False
    return (fact, text), not any(name.startswith("_") for name in kwargs)


def _fact_name(fact: Any) -> str | None:
    from pyinfra.api.facts import FactBase, ShortFactBase

    if not isinstance(fact, type) or not issubclass(fact, FactBase) \
            or issubclass(fact, ShortFactBase) or "<locals>" in fact.__qualname__:
        return None
    return f"{fact.__module__}:{fact.__qualname__}"


def _fact_class(name: str) -> Any:
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


class FactList:
    """The facts a node's deploy read: a JSON list of {fact, args, kwargs} in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [entry for entry in entries if isinstance(entry, dict)] \
            if isinstance(entries, list) else []

    def save(self, entries: Iterable[dict[str, Any]]) -> None:
        from clonefleet.atomic import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(list(entries), indent=1), 0o600)


class FactReadings:
    """One host's fact readings during a deploy: the answers that still hold, the list of
    every fact asked (for the next run), which operation asked which while prepared, and
    how many commands have run on the host (answers read before the last of them are
    forgotten)."""

    def __init__(self, known: dict[Key, Any] | None = None) -> None:
        self.answers: dict[Key, Any] = dict(known or {})
        self.asked: dict[Key, dict[str, Any]] = {}
        self.by_operation: dict[str, list[Key]] = {}
        self.in_one_go = len(self.answers)  # answers read by `read_in_one_go`
        self.alone = 0  # facts read on their own
        self.ran = 0  # commands handed to the host so far
        self.answered_at = 0  # `ran` when `answers` were read

    def listed(self) -> list[dict[str, Any]]:
        return list(self.asked.values())

    def next_readings(self, host: Any) -> list[dict[str, Any]]:
        """While executing: the listed facts that the operation under way and the ones after
        it asked while prepared, up to the next operation that will run commands (after
        which they must be read again anyway)."""
        state = host.state
        ops = state.ops.get(host, {})
        keys: dict[Key, None] = {}
        started = False
        for op_hash in state.get_op_order():
            if op_hash not in ops:
                continue
            if op_hash == host.current_op_hash:
                started = True
            elif not started:
                continue
            keys.update(dict.fromkeys(self.by_operation.get(op_hash, ())))
            if op_hash != host.current_op_hash and (
                    not state.should_check_for_changes()
                    or ops[op_hash].operation_meta.will_change):
                break
        return [self.asked[key] for key in keys if key not in self.answers]


@contextlib.contextmanager
def facts_read_once(host: Any, readings: FactReadings | None = None,
                    read: Callable[..., Any] | None = None) -> Iterator[FactReadings]:
    """Read each (fact, arguments) from `host` once for as long as its answer holds: the
    whole preparation (nothing runs then), and while executing until the next command runs
    on the host (`reuse_at_execution` counts them); `readings` may hold answers already.

    While executing, a fact that is not known is read together with the other facts the
    next operations asked for while prepared (`FactReadings.next_readings`), in one command.

    Operations read facts through `host.get_fact`; this shadows it on this one host object
    for the duration. Answers are copied out, so an operation that edits the structure it got
    does not change what the next one reads. An operation run with its own shell, user or
    environment (pyinfra's `_sudo`, `_env`, ...) reads its facts itself, uncached.

    `read`: how a fact is read on its own (default: pyinfra's `host.get_fact`)."""
    readings = readings if readings is not None else FactReadings()
    original = read or host.get_fact

    def get_fact(fact: Any, *args: Any, **kwargs: Any) -> Any:
        key, listable = _key(fact, args, kwargs)
        if _own_arguments(host):
            readings.alone += 1
            return original(fact, *args, **kwargs)
        name = _fact_name(fact)
        listed = listable and name is not None
        executing = host.state.is_executing
        if listed and not executing:
            readings.asked.setdefault(key, {"fact": name, "args": list(args), "kwargs": kwargs})
            if host.current_op_hash:
                asked_by = readings.by_operation.setdefault(host.current_op_hash, [])
                if key not in asked_by:
                    asked_by.append(key)
        if executing:
            if readings.ran != readings.answered_at:  # a command ran since: read again
                readings.answers.clear()
                readings.answered_at = readings.ran
            if key not in readings.answers and listed:
                answers = read_in_one_go(host, readings.next_readings(host))
                readings.in_one_go += len(answers)
                readings.answers.update(answers)
        if key not in readings.answers:
            readings.alone += 1
            readings.answers[key] = original(fact, *args, **kwargs)
        return copy.deepcopy(readings.answers[key])

    host.get_fact = get_fact
    try:
        yield readings
    finally:
        del host.get_fact


def answer_or_default(host: Any) -> Callable[..., Any]:
    """A fact reader for a pass that only lists the facts a deploy asks (`facts_read_once`'s
    `read`): a fact that cannot be read where the pass runs (a running systemd's unit states
    in a chroot, a database that is not running) answers its default instead of failing the
    host, and pyinfra's error for it is not shown."""
    from pyinfra.api.facts import get_fact

    def read(fact: Any, *args: Any, **kwargs: Any) -> Any:
        pyinfra_logger = logging.getLogger("pyinfra")
        level = pyinfra_logger.level
        pyinfra_logger.setLevel(logging.CRITICAL)
        try:
            return get_fact(host.state, host, fact, args=args, kwargs=kwargs,
                            apply_failed_hosts=False)
        except Exception:
            return fact().default() if _fact_name(fact) else None
        finally:
            pyinfra_logger.setLevel(level)

    return read


def _own_arguments(host: Any) -> bool:
    """Whether the operation being prepared runs its commands differently from a plain one
    (another user or shell, an environment, a folder, other success codes)."""
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments

    current = host.current_op_global_arguments
    if not current:
        return False
    defaults, _ = pop_global_arguments(host.state, host, {})
    return any(current.get(name) != defaults.get(name) for name in CONNECTOR_ARGUMENT_KEYS
               if name not in ("_timeout", "_retries", "_retry_delay", "_retry_until"))


def read_in_one_go(host: Any, entries: list[dict[str, Any]]) -> dict[Key, Any]:
    """Read the listed facts from `host` in one command; the answers of those read cleanly.
    Any fact that cannot be read this way is left out (read on its own later)."""
    from pyinfra.api.command import StringCommand

    planned: list[tuple[Key, Any, str]] = []
    stats: list[tuple[Key, Any, str]] = []  # (key, fact, path) answered by `stat_script`
    for entry in entries:
        try:
            fact_class = _fact_class(str(entry["fact"]))
            args, kwargs = tuple(entry.get("args") or ()), dict(entry.get("kwargs") or {})
            if _fact_name(fact_class) is None:
                continue
            key, listable = _key(fact_class, args, kwargs)
            fact = fact_class()
            if not listable or fact.shell_executable \
                    or fact.check_preconditions(host.state, host):
                continue
            text = _raw(fact.command, args, kwargs)
            required = _raw(fact.requires_command, args, kwargs)
        except Exception:  # a stale entry: a fact gone or changed, arguments it refuses
            continue
        path = stat_path(fact, args, kwargs, text)
        if path is not None and not required:
            stats.append((key, fact, path))
            continue
        if required:  # as pyinfra guards it; a missing command is then read alone
            text = (f"if command -v {required} >/dev/null 2>&1; then ( {text}\n); "
                    f"else echo {shlex.quote(MISSING_COMMAND)}; fi")
        planned.append((key, fact, text))
    if not planned and not stats:
        return {}
    paths = list(dict.fromkeys(path for _, _, path in stats))
    commands = [text for _, _, text in planned] + ([stat_script(paths)] if paths else [])
    marker = f"--clonefleet-fact-{secrets.token_hex(8)}"
    try:
        status, output = host.run_shell_command(StringCommand(batch_script(commands, marker)),
                                                _timeout=READ_TIMEOUT)
    except Exception:  # a shortcut only: each fact is then read alone, with pyinfra's errors
        return {}
    outputs = split_batch(output.stdout_lines, marker) if status else None
    if outputs is None or len(outputs) != len(commands):
        return {}
    answers = {}
    for (key, fact, _), (code, lines) in zip(planned, outputs[:len(planned)], strict=True):
        value = _answer(fact, code, lines)
        if value is not _UNREAD:
            answers[key] = value
    if paths:
        code, lines = outputs[-1]
        found = split_stat(lines) if code == "0" else {}
        for key, fact, path in stats:
            if path in found:
                value = _answer(fact, "0", found[path])
                if value is not _UNREAD:
                    answers[key] = value
    return answers


# ---- the file facts of many paths in one `stat` ----
#
# pyinfra's File, Link and Directory facts run, per path, `! (test -e P || test -L P) ||
# ( stat -c FORMAT P ... )`: nothing for a missing path (the fact's default), else stat's
# one line. On an emulated node the stat process costs some 50 ms, and a deploy asks for
# about a hundred such paths. `stat_script` tests every path with the shell's own `test`
# and runs one `stat` for all that exist, each line prefixed with its path; `split_stat`
# gives each path the lines pyinfra's own command would have printed.

def _stat_format() -> str | None:
    from pyinfra.facts.files import LINUX_STAT_COMMAND

    prefix = "stat -c '"
    if LINUX_STAT_COMMAND.startswith(prefix) and LINUX_STAT_COMMAND.endswith("'") \
            and "'" not in LINUX_STAT_COMMAND[len(prefix):-1]:
        return LINUX_STAT_COMMAND[len(prefix):-1]
    return None


def stat_path(fact: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              text: str) -> str | None:
    """The path of a File, Link or Directory fact whose command is exactly pyinfra's stat
    command for a plain path (no "~/", no tab or newline), else None (read as usual)."""
    from pyinfra.facts.files import File

    if not isinstance(fact, File) or type(fact).command is not File.command \
            or type(fact).process is not File.process or _stat_format() is None:
        return None
    path = kwargs.get("path", args[0] if len(args) == 1 and not kwargs else None)
    if not isinstance(path, str) or not path or path.startswith("~/") \
            or any(character in path for character in "\t\n\0"):
        return None
    try:
        expected = _raw(File().command, (path,), {})
    except Exception:
        return None
    return path if text == expected else None


STAT_FOUND = "S"
STAT_MISSING = "M"


def stat_script(paths: list[str]) -> str:
    """Shell: a line `M<TAB>PATH` for each path that does not exist (not even as a broken
    link), and one `stat` over all the others, printing `S<TAB>PATH<TAB>` before the line
    pyinfra's own stat command prints for it."""
    quoted = " ".join(shlex.quote(path) for path in paths)
    form = f"{STAT_FOUND}\t%n\t{_stat_format()}"
    return (f"set --; for p in {quoted}; do if test -e \"$p\" || test -L \"$p\"; "
            f'then set -- "$@" "$p"; else printf \'{STAT_MISSING}\\t%s\\n\' "$p"; fi; done; '
            f'[ "$#" -eq 0 ] || stat -c {shlex.quote(form)} -- "$@"')


def split_stat(lines: list[str]) -> dict[str, list[str]]:
    """Per path, the output lines pyinfra's stat command would give for it alone: none for
    a missing path, stat's line for one that exists. A path that `stat` could not read is
    left out (read alone, with pyinfra's fallbacks)."""
    found: dict[str, list[str]] = {}
    for line in lines:
        kind, _, rest = line.partition("\t")
        if kind == STAT_MISSING:
            found[rest] = []
        elif kind == STAT_FOUND:
            path, _, stat_line = rest.partition("\t")
            found[path] = [stat_line]
    return found


_UNREAD = object()
# What the guard prints when a fact's required command is missing (pyinfra has its own).
MISSING_COMMAND = "__clonefleet_missing_command__"


def _raw(attribute: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A fact's command (or required command) as the shell text pyinfra would run."""
    from pyinfra.api.command import StringCommand

    value = attribute(*args, **kwargs) if callable(attribute) else attribute
    if value is None:
        return ""
    return value.get_raw_value() if isinstance(value, StringCommand) else str(value)


def batch_script(commands: list[str], marker: str) -> str:
    """Shell running each command in a subshell, standard error dropped, and after each an
    empty line's newline and a line `MARKER STATUS`."""
    return "\n".join(f"( {command}\n) 2>/dev/null; s=$?; echo; echo \"{marker} $s\""
                     for command in commands)


def split_batch(lines: list[str], marker: str) -> list[tuple[str, list[str]]] | None:
    """Each command's (exit status, output lines as pyinfra makes them) from the output lines
    of `batch_script`; None when the output does not end with a marker.

    Before each marker are the command's output split at its newlines, plus the one `echo`
    added: exactly `output.split("\\n")`. pyinfra reads a command's lines from that without
    their newlines, so a last empty piece (the output ended with a newline, or was empty)
    is not a line."""
    outputs: list[tuple[str, list[str]]] = []
    pieces: list[str] = []
    for line in lines:
        if line.startswith(f"{marker} "):
            if pieces and pieces[-1] == "":
                pieces.pop()
            outputs.append((line[len(marker) + 1:], pieces))
            pieces = []
        else:
            pieces.append(line)
    return outputs if not pieces else None


def _answer(fact: Any, status: str, lines: list[str]) -> Any:
    """A fact's value from its exit status and output lines, as pyinfra would have made it;
    `_UNREAD` when it failed or cannot be parsed."""
    if status != "0" or lines == [MISSING_COMMAND]:
        return _UNREAD
    if not lines:
        return fact.default()
    try:
        return fact.process(lines)
    except Exception:  # FactProcessError or other: read on its own, with pyinfra's error
        return _UNREAD


def reuse_at_execution(state: Any, readings: dict[str, FactReadings]) -> int:
    """Before a prepared deploy runs: count, per host, the commands its operations hand to
    it (so that its `FactReadings` know when answers stop holding), and make every operation
    that was prepared as changing nothing skip its execution-time reading while no command
    has run on its host yet. The number of such operations."""
    guarded = 0
    for host in state.inventory:
        host_readings = readings.get(host.name)
        if host_readings is None:  # not prepared: it runs nothing
            continue
        ops = state.ops.get(host, {})
        for op_hash in state.get_op_order():
            if op_hash not in ops:
                continue
            op_data = ops[op_hash]
            # will_change: found while preparing, with pyinfra's change check.
            if state.should_check_for_changes() and op_data.operation_meta.will_change is False:
                op_data.command_generator = _unless_changed(op_data.command_generator,
                                                            host_readings)
                guarded += 1
            op_data.command_generator = _counted(op_data.command_generator, host_readings)
    return guarded


def _unless_changed(generator: Callable[[], Iterator[Any]],
                    readings: FactReadings) -> Callable[[], Iterator[Any]]:
    def guarded() -> Iterator[Any]:
        # Every command an operation yields is counted (`_counted`), even one that failed.
        if readings.ran:
            yield from generator()

    return guarded


def _counted(generator: Callable[[], Iterator[Any]],
             readings: FactReadings) -> Callable[[], Iterator[Any]]:
    def counted() -> Iterator[Any]:
        for command in generator():
            readings.ran += 1  # before pyinfra runs it: any later reading must be fresh
            yield command

    return counted
