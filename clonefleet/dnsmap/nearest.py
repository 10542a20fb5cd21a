"""Nearest node by great-circle distance, in Python and as the LUA program PowerDNS runs.

PowerDNS 4.7's `pickclosest` compares flat latitude/longitude differences (and mishandles the
antimeridian for negative longitude differences), so an Oslo client was sent to Falkenstein
although Helsinki is closer. The LUA program written here computes the haversine distance
itself from the client's `latlon()` and the candidates' coordinates written into the record;
`verify` computes the expected answer with `nearest()` below. Both must use the same formula,
the same tie tolerance and the same rounding of the client's location, so they live together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# PowerDNS prints an unknown location as exactly this string (4.7, checked on this machine).
UNKNOWN_LOCATION = "0.000000 0.000000"
# Candidates this close (radians of arc, about 6 mm on Earth) count as equally near: the two
# languages' sin/cos may differ in the last bit, and nodes of one region share coordinates.
TIE_RADIANS = 1e-9


@dataclass(frozen=True)
class Site:
    """Candidates at one place: the active nodes of a region share its coordinates."""

    latitude: float
    longitude: float
    addresses: tuple[str, ...]


def sites(candidates: Sequence[tuple[str, float, float]]) -> tuple[Site, ...]:
    """Group (address, latitude, longitude) by place, keeping first-seen order."""
    grouped: dict[tuple[float, float], list[str]] = {}
    for address, latitude, longitude in candidates:
        grouped.setdefault((latitude, longitude), []).append(address)
    return tuple(Site(latitude, longitude, tuple(addresses))
                 for (latitude, longitude), addresses in grouped.items())


def arc(latitude_a: float, longitude_a: float, latitude_b: float, longitude_b: float) -> float:
    """Great-circle distance in radians (haversine); multiply by 6371 for kilometres."""
    phi_a, phi_b = math.radians(latitude_a), math.radians(latitude_b)
    half = (math.sin((phi_b - phi_a) / 2) ** 2
            + math.cos(phi_a) * math.cos(phi_b)
            * math.sin((math.radians(longitude_b) - math.radians(longitude_a)) / 2) ** 2)
    return 2 * math.asin(math.sqrt(min(1.0, half)))


def as_reported(latitude: float, longitude: float) -> tuple[float, float]:
    """The client location as the LUA program sees it: `latlon()` prints it with `%f`."""
    return float(f"{latitude:.6f}"), float(f"{longitude:.6f}")


def nearest(latitude: float, longitude: float, places: Sequence[Site],
            count: int = 1) -> tuple[frozenset[str], frozenset[str]]:
    """What a client there may be answered with `count` addresses: (required, allowed).

    A correct answer has min(count, all) addresses, contains every `required` one (strictly
    nearer than the count-th nearest) and nothing outside `allowed` (no farther than it); ties
    at that distance are the program's random choice. With count 1: nothing required, allowed
    = every address at the smallest distance. An unknown location (`0.000000 0.000000`, as
    PowerDNS reports it), or a count of at least all addresses, requires every address.
    """
    everything = frozenset(address for place in places for address in place.addresses)
    latitude, longitude = as_reported(latitude, longitude)
    if not places or (latitude, longitude) == (0.0, 0.0) or count >= len(everything):
        return everything, everything
    ranked = sorted((arc(latitude, longitude, place.latitude, place.longitude), address)
                    for place in places for address in place.addresses)
    boundary = ranked[count - 1][0]
    required = frozenset(address for distance, address in ranked
                         if distance < boundary - TIE_RADIANS)
    allowed = frozenset(address for distance, address in ranked
                        if distance <= boundary + TIE_RADIANS)
    return required, allowed


def lua_program(places: Sequence[Site], count: int = 1) -> str:
    """The LUA record program: one random address among the nearest (or the `count` nearest,
    ties in random order), every address when the client's location is unknown.
    `pickrandom` is PowerDNS's (its own random source)."""
    listed = ",".join(
        f"{{{place.latitude!r},{place.longitude!r},{{"
        + ",".join(f"'{address}'" for address in place.addresses) + "}}"
        for place in places)
    return (f";local s={{{listed}}} local c=latlon() "
            f"if c=='{UNKNOWN_LOCATION}' then local a={{}} for _,p in ipairs(s) do "
            "for _,n in ipairs(p[3]) do a[#a+1]=n end end return a end "
            "local r=math.rad local y,x=c:match('(%S+) (%S+)') y=r(tonumber(y)) x=r(tonumber(x)) "
            "local d={} local b=9 for i,p in ipairs(s) do local q=r(p[1]) "
            "local h=math.sin((q-y)/2)^2+math.cos(y)*math.cos(q)*math.sin((r(p[2])-x)/2)^2 "
            "d[i]=2*math.asin(math.sqrt(math.min(1,h))) if d[i]<b then b=d[i] end end "
            + (f"local w={{}} for i,p in ipairs(s) do if d[i]<=b+{TIE_RADIANS!r} then "
               "for _,n in ipairs(p[3]) do w[#w+1]=n end end end return pickrandom(w)"
               if count == 1 else
               # Every address with its place's distance and a random tie-breaker, sorted.
               "local o={} for i,p in ipairs(s) do for _,n in ipairs(p[3]) do "
               "o[#o+1]={d[i],math.random(),n} end end "
               f"table.sort(o,function(u,v) if math.abs(u[1]-v[1])>{TIE_RADIANS!r} then "
               "return u[1]<v[1] end return u[2]<v[2] end) "
               f"local w={{}} for i=1,math.min({count},#o) do w[i]=o[i][3] end return w"))
