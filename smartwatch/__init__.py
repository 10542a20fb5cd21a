"""smartwatch: the node agent that notices a dying disk, tells the operators and drains the node.

It is installed on every node, so it depends on pySMART and apprise only and never imports
the control plane (`clonefleet`).
"""

from __future__ import annotations

__version__ = "0.1.0"
