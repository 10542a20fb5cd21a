"""Run any deploy on pyinfra's @fake connector and keep what it would upload and run.

Run as its own process (gevent must patch the interpreter before anything imports sockets):
    python fake_deploy.py MODULE:FUNCTION[,MODULE:FUNCTION...] OUTPUT_FOLDER HOST_DATA_JSON
Writes every uploaded file under OUTPUT_FOLDER/files/<remote path> and the commands it would
run to OUTPUT_FOLDER/commands.json. Facts answer empty (nothing installed, nothing running).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from io import IOBase  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyinfra.api import Config, Inventory, State  # noqa: E402
from pyinfra.api.connect import connect_all, disconnect_all  # noqa: E402
from pyinfra.api.deploy import add_deploy  # noqa: E402
from pyinfra.api.operations import run_ops  # noqa: E402
from pyinfra.api.state import StateStage  # noqa: E402
from pyinfra.connectors.fake import FakeConnector  # noqa: E402


def main() -> int:
    deploys = [getattr(importlib.import_module(module), function)
               for module, function in (spec.split(":") for spec in sys.argv[1].split(","))]
    output = Path(sys.argv[2])
    data: dict[str, Any] = {"fake_delay": 0, "fake_delay_jitter": 0, **json.loads(sys.argv[3])}
    uploaded = output / "files"

    def put_file(self: FakeConnector, filename_or_io: str | IOBase, remote_filename: str,
                 *args: Any, **kwargs: Any) -> bool:
        target = uploaded / remote_filename.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(filename_or_io, str):
            target.write_bytes(Path(filename_or_io).read_bytes())
        else:
            content = filename_or_io.read()
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        return True

    FakeConnector.put_file = put_file  # type: ignore[method-assign]
    inventory = Inventory(([("@fake/node", data)], {}))
    state = State(inventory=inventory, config=Config())
    state.cwd = str(ROOT)
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    for deploy in deploys:
        add_deploy(state, deploy)
    state.set_stage(StateStage.Execute)
    run_ops(state)
    host = inventory.get_host("@fake/node")
    commands = list(host.connector.executed_commands)
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    (output / "commands.json").write_text(json.dumps(commands, indent=1))
    return 1 if state.failed_hosts else 0


if __name__ == "__main__":
    sys.exit(main())
