"""Ask a node about its state fewer times during a deploy, without trusting anything stale.

pyinfra 3 runs each operation's body twice on a real run: once while the deploy is prepared
(to learn whether it would change something) and once more when it executes (because an
earlier operation may have changed the node since). Every fact an operation reads is a
command on the node, and pyinfra 3 keeps no cache, so a deploy that changes nothing still
reads every file's state twice, and the same folder's state many times. On an emulated lab
node a fact costs about a third of a second; the full-clone deploy reads some 180 of them in
each phase.

Two rules remove the repeats, each exact:

- While a deploy is prepared nothing runs on the node, so the same fact with the same
  arguments has the same answer: `facts_read_once` answers repeats from the first reading.
- At execution, an operation that found nothing to do while prepared still has nothing to do
  as long as no earlier operation on that node has run a command: `skip_recheck_until_changed`
  skips its second reading until then. From the first operation that ran something on a
  node, that node's later operations are read again as pyinfra always does.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def facts_read_once(host: Any) -> Iterator[None]:
    """While preparing `host`'s operations, read each (fact, arguments) from it only once.

    Operations read facts through `host.get_fact`; this shadows it on this one host object
    for the duration. Answers are copied out, so an operation that edits the structure it got
    does not change what the next one reads."""
    original = host.get_fact
    answers: dict[tuple[Any, str, str], Any] = {}

    def get_fact(fact: Any, *args: Any, **kwargs: Any) -> Any:
        key = (fact, repr(args), repr(sorted(kwargs.items())))
        if key not in answers:
            answers[key] = original(fact, *args, **kwargs)
        return copy.deepcopy(answers[key])

    host.get_fact = get_fact
    try:
        yield
    finally:
        del host.get_fact


def skip_recheck_until_changed(state: Any) -> int:
    """Make every prepared operation that would change nothing skip its execution-time
    reading while no earlier operation on its host has run a command; the number of such
    operations. Call after the deploy is prepared (with pyinfra's change check on), before
    it runs."""
    if not state.should_check_for_changes():  # nothing was learned while preparing
        return 0
    guarded = 0
    for host in state.inventory:
        ops = state.ops.get(host, {})
        earlier: list[Any] = []
        for op_hash in state.get_op_order():
            if op_hash not in ops:
                continue
            op_data = ops[op_hash]
            meta = op_data.operation_meta
            if meta.will_change is False:  # found while preparing, with the change check
                op_data.command_generator = _unless_changed(op_data.command_generator,
                                                            tuple(earlier))
                guarded += 1
            earlier.append(meta)
    return guarded


def _unless_changed(generator: Callable[[], Iterator[Any]],
                    earlier: tuple[Any, ...]) -> Callable[[], Iterator[Any]]:
    def guarded() -> Iterator[Any]:
        # `executed`: the operation ran at least one command (even one that failed).
        if any(meta.executed for meta in earlier):
            yield from generator()

    return guarded
