from __future__ import annotations

from smartwatch.cli import main

main()
