#!/usr/bin/env python3
"""Replay recorded smartctl outputs, the way pySMART's own test suite does.

The recording for `smartctl ARGS...` is the file named "_" + "_".join(ARGS) with every "/"
replaced by "_" (so `-d sat --all /dev/sda` → `_-d_sat_--all__dev_sda`) in the folder named by
$SMARTWATCH_REPLAY_DIR. A file of the same name plus ".exit" holds smartctl's exit status.
An argument list without a recording answers like smartctl for a missing device (status 2).
A recording may have a NAME.locale twin: the same output with a non-C locale's digit grouping,
played (like real smartctl would print it) when the numeric locale in force is not C:
LC_ALL, else LC_NUMERIC, else LANG.
A line is appended to $SMARTWATCH_REPLAY_LOG, when set, for every call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def recording_name(arguments: list[str]) -> str:
    return "_" + "_".join(arguments).replace("/", "_")


def numeric_locale() -> str:
    for name in ("LC_ALL", "LC_NUMERIC", "LANG"):
        if os.environ.get(name):
            return os.environ[name]
    return "C"


def main() -> int:
    folder = Path(os.environ["SMARTWATCH_REPLAY_DIR"])
    arguments = sys.argv[1:]
    log = os.environ.get("SMARTWATCH_REPLAY_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(" ".join(arguments) + "\n")
    recording = folder / recording_name(arguments)
    if not recording.is_file():
        device = arguments[-1] if arguments else ""
        sys.stdout.write(
            "smartctl 7.3 2022-02-28 r5338 [x86_64-linux-6.1.0-13-amd64] (local build)\n"
            "Copyright (C) 2002-22, Bruce Allen, Christian Franke, www.smartmontools.org\n\n"
            f"Smartctl open device: {device} failed: No such device\n"
        )
        return 2
    localised = recording.with_name(recording.name + ".locale")
    if localised.is_file() and numeric_locale() not in ("C", "POSIX"):
        sys.stdout.buffer.write(localised.read_bytes())
    else:
        sys.stdout.buffer.write(recording.read_bytes())
    status_file = recording.with_name(recording.name + ".exit")
    return int(status_file.read_text().strip()) if status_file.is_file() else 0


if __name__ == "__main__":
    sys.exit(main())
