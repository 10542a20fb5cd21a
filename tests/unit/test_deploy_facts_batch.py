"""Facts read in one command give what pyinfra makes of each command run alone: the same
lines (pyinfra splits a command's output at newlines and drops each newline), the same
default for no output, and nothing at all for a command that failed or is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.facts import FactBase
from pyinfra.facts.files import Directory, File, Link

from clonefleet.deploy_facts import (
    _UNREAD,
    MISSING_COMMAND,
    _answer,
    _raw,
    batch_script,
    split_batch,
    split_stat,
    stat_path,
    stat_script,
)

COMMANDS = [
    "printf 'a\\nb'",  # no newline at the end
    "printf 'a\\n\\n'",  # an empty last line
    "printf '\\n'",
    "true",  # no output: the fact's default
    "echo 'x  y'; echo '  indented'",
    "echo out; echo err >&2",  # standard error is not part of a fact's output
    "printf 'caf\\303\\251\\n'",  # UTF-8
    "echo half; exit 4",  # failed: not an answer
    "cat /nonexistent/file",
    f"echo {MISSING_COMMAND}",  # the guard's answer for a missing command
    "exit",  # ends its own subshell only
    "echo after",
]


class Lines(FactBase[list[str]]):
    def command(self) -> str:
        return ""

    def default(self) -> list[str]:
        return ["<default>"]

    def process(self, output: list[str]) -> list[str]:
        return output


def alone(command: str) -> object:
    """What pyinfra's fact would be with `command` run on its own."""
    done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=10)
    lines = [line.rstrip("\n") for line in done.stdout.decode().splitlines(keepends=True)]
    if done.returncode != 0 or lines == [MISSING_COMMAND]:
        return _UNREAD
    return Lines().process(lines) if lines else Lines().default()


MARKER = "--clonefleet-fact-test"


def test_each_command_of_the_batch_reads_as_it_would_alone() -> None:
    done = subprocess.run(["sh", "-c", batch_script(COMMANDS, MARKER)], capture_output=True,
                          timeout=30)

    assert done.returncode == 0 and done.stderr == b""
    # Lines as pyinfra reads a command's output: split at newlines, each without its own.
    lines = [line.rstrip("\n") for line in done.stdout.decode().splitlines(keepends=True)]
    outputs = split_batch(lines, MARKER)
    assert outputs is not None and len(outputs) == len(COMMANDS)
    got = [_answer(Lines(), status, output) for status, output in outputs]
    assert got == [alone(command) for command in COMMANDS]
    assert got[0] == ["a", "b"] and got[1] == ["a", ""] and got[2] == [""]
    assert got[3] == ["<default>"] and got[4] == ["x  y", "  indented"]
    assert got[7] is _UNREAD and got[9] is _UNREAD and got[11] == ["after"]


def test_output_cut_short_is_no_answer() -> None:
    assert split_batch(["a", f"{MARKER} 0", "b"], MARKER) is None
    assert split_batch(["a", "", f"{MARKER} 0"], MARKER) == [("0", ["a"])]


@pytest.mark.parametrize("status", ["1", "127", ""])
def test_a_failed_command_is_not_an_answer(status: str) -> None:
    assert _answer(Lines(), status, ["x"]) is _UNREAD


def test_a_fact_that_cannot_process_its_output_is_read_alone() -> None:
    class Strict(Lines):
        def process(self, output: list[str]) -> list[str]:
            raise ValueError(output)

    assert _answer(Strict(), "0", ["x"]) is _UNREAD


def pyinfra_alone(fact: Any, path: str) -> object:
    """What pyinfra makes of `fact` for `path` with its own command run on its own."""
    command = _raw(fact.command, (), {"path": path})
    done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=10)
    lines = [line.rstrip("\n") for line in done.stdout.decode().splitlines(keepends=True)]
    return _answer(fact, str(done.returncode), lines)


def test_file_facts_of_many_paths_in_one_stat_read_as_each_would_alone(
        tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "it's a file").write_text("y")
    paths = [str(tmp_path / name) for name in
             ("file", "folder", "link", "broken", "missing", "it's a file")]
    facts = [File(), Directory(), Link()]
    planned = [(fact, path) for fact in facts for path in paths]
    for fact, path in planned:  # exactly pyinfra's command: taken by the one stat
        assert stat_path(fact, (), {"path": path}, _raw(fact.command, (), {"path": path})) \
            == path

    done = subprocess.run(["sh", "-c", batch_script([stat_script(paths)], MARKER)],
                          capture_output=True, timeout=30)
    lines = [line.rstrip("\n") for line in done.stdout.decode().splitlines(keepends=True)]
    outputs = split_batch(lines, MARKER)
    assert outputs is not None and outputs[0][0] == "0"
    found = split_stat(outputs[0][1])

    got = [_answer(fact, "0", found[path]) for fact, path in planned]
    assert got == [pyinfra_alone(fact, path) for fact, path in planned]
    by = dict(zip([(type(f).__name__, p.rsplit("/", 1)[1]) for f, p in planned], got,
                  strict=True))
    assert by["File", "file"]["size"] == 1 and by["File", "folder"] is False
    assert by["Directory", "folder"] and by["Link", "link"]["link_target"].endswith("file")
    assert by["File", "missing"] is None and by["Link", "broken"]
    assert by["File", "it's a file"]["size"] == 1


def test_only_plain_paths_with_pyinfras_own_command_go_to_the_one_stat() -> None:
    class Custom(File):
        def command(self, path: str) -> str:  # type: ignore[override]
            return f"stat {path}"

    assert stat_path(File(), (), {"path": "~/x"}, _raw(File().command, (), {"path": "~/x"})) \
        is None
    assert stat_path(File(), (), {"path": "a\tb"}, _raw(File().command, (), {"path": "a\tb"})) \
        is None
    assert stat_path(Custom(), (), {"path": "/x"}, "stat /x") is None
    assert stat_path(File(), (), {"path": "/x"}, "something else") is None


def test_a_path_stat_did_not_answer_for_is_left_to_be_read_alone() -> None:
    assert split_stat(["M\t/gone", "S\t/here\tuser=root ...", "noise"]) == {
        "/gone": [], "/here": ["user=root ..."]}
