"""Find templates/ from a checkout or from the installed clonefleet package."""

from __future__ import annotations

from pathlib import Path


def template(name: str) -> str:
    checkout = Path(__file__).resolve().parent.parent / "templates" / name
    if checkout.exists():
        return str(checkout)
    import clonefleet

    return str(Path(clonefleet.__file__).resolve().parent / "templates" / name)


def render(name: str, **variables: object) -> str:
    """A template rendered exactly as `files.template` renders it on a node (for tests)."""
    from pyinfra.api.util import get_template

    return str(get_template(template(name)).render(**variables))
