"""Turn vendor-packed ATA raw values into real counts, as smartctl's `-v ID,FORMAT` presets do.

Seagate packs several counters into one 48-bit raw value: 188 (Command_Timeout) holds three
16-bit counters, the low word being the total (smartctl's `raw16` preset prints them as
"w2 w1 w0"); 1 (Raw_Read_Error_Rate) and 7 (Seek_Error_Rate) hold an error count above a 32-bit
operation count (smartctl's `raw24/raw32`). smartctl only applies a preset when its drive
database names the exact model, so the same attribute reaches us either as the plain 48-bit
number ("4295032904") or already split ("1 1 72", "0/148350832"). Both are decoded here, so a
finding says "grew from 0 to 72", never "to 4295032904".
"""

from __future__ import annotations

import re

RAW16 = "raw16"
RAW24_RAW32 = "raw24/raw32"

# Attribute id -> smartctl preset format, for drives whose vendor packs that attribute.
SEAGATE_PRESETS = {1: RAW24_RAW32, 7: RAW24_RAW32, 188: RAW16}

_SEAGATE_MODEL = re.compile(r"^(ST\d|Seagate\b)", re.IGNORECASE)


def is_seagate(model: str, family: str = "") -> bool:
    """Seagate's ATA models start with "ST" and a digit (ST3250318AS, ST2000NM000A-2J2100)."""
    return bool(_SEAGATE_MODEL.match(model.strip())) or "seagate" in family.lower()


def presets_for(model: str, family: str = "") -> dict[int, str]:
    return SEAGATE_PRESETS if is_seagate(model, family) else {}


def count(attribute_id: int, raw: str, raw48: int | None, presets: dict[int, str]) -> int | None:
    """The count an attribute's raw value stands for.

    `raw` is the RAW_VALUE column as smartctl printed it; `raw48` the whole 48-bit value when
    known (smartctl's JSON gives it), else None.
    """
    numbers = [int(number) for number in re.findall(r"\d+", raw)]
    preset = presets.get(attribute_id)
    if preset == RAW16:
        if raw48 is not None:
            return raw48 & 0xFFFF
        if len(numbers) == 3:  # smartctl already split it: "w2 w1 w0"
            return numbers[2]
        return numbers[0] & 0xFFFF if numbers else None
    if preset == RAW24_RAW32:
        if raw48 is not None:
            return raw48 >> 32
        if "/" in raw and numbers:  # smartctl already split it: "errors/operations"
            return numbers[0]
        return numbers[0] >> 32 if numbers else None
    if numbers:
        return numbers[0]
    return raw48
