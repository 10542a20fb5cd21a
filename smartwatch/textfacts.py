"""Facts read straight from smartctl's text output, whatever pySMART makes of the rest.

The identity of a disk (model, serial, firmware) and its overall-health line decide how a
finding reads and whether a node drains, so they must survive a pySMART parser that raises on
a layout it does not know: these readers look only at the line they need.
"""

from __future__ import annotations

import re
import traceback

MODEL_PREFIXES = ("Device Model:", "Model Number:", "Product:")
SERIAL_PREFIXES = ("Serial Number:", "Serial number:")
FIRMWARE_PREFIXES = ("Firmware Version:", "Revision:")


def field(lines: list[str], prefixes: tuple[str, ...]) -> str:
    """The value after the first line starting with one of `prefixes`, or ""."""
    for line in lines:
        if line.startswith(prefixes):
            return line.split(":", 1)[1].strip()
    return ""


def model(lines: list[str]) -> str:
    # pySMART 1.4.3 takes any line containing "Product" as the model, so smartctl 7.3's
    # "Add. Product Id:" line would override "Device Model:"; only the line's start counts here.
    return field(lines, MODEL_PREFIXES)


def serial(lines: list[str]) -> str:
    return field(lines, SERIAL_PREFIXES)


def firmware(lines: list[str]) -> str:
    return field(lines, FIRMWARE_PREFIXES)


def family(lines: list[str]) -> str:
    return field(lines, ("Model Family:",))


def overall_health(lines: list[str]) -> str | None:
    """"PASSED", "FAILED", or None when smartctl printed no health line."""
    for line in lines:
        if "SMART overall-health self-assessment test result:" in line:
            return "PASSED" if line.split(":", 1)[1].strip() == "PASSED" else "FAILED"
        if "SMART Health Status:" in line:  # SCSI/SAS
            return "PASSED" if line.split(":", 1)[1].strip() == "OK" else "FAILED"
    return None


def celsius_after(lines: list[str], prefix: str, unit: str = "Celsius") -> int | None:
    for line in lines:
        if line.startswith(prefix):
            match = re.search(rf"(-?\d+)\s+{unit}\b", line)
            return int(match.group(1)) if match else None
    return None


def is_scsi(lines: list[str]) -> bool:
    # pySMART falls back to its SCSI parser for any output, ATA without attributes included.
    return any(line.startswith(("SMART Health Status:", "Transport protocol:")) for line in lines)


def describe_error(error: BaseException) -> str:
    """A parser error with its cause spelled out: StopIteration and friends have no message,
    so the type and the line that raised are what tells a maintainer where to look."""
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        parts = last.filename.replace("\\", "/").split("/")
        short = "/".join(parts[parts.index("pySMART"):]) if "pySMART" in parts else parts[-1]
        where = f" at {short}:{last.lineno}"
    message = str(error).strip()
    return f"{type(error).__name__}{': ' + message if message else ''}{where}"
