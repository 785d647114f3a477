"""``flower-supernode`` with shorter waits between its polls (``fedit flower supernode --poll``).

Flower 1.42's SuperNode (``flwr/supernode/start_client_internal.py``) sleeps a fixed 3 s after
every poll of the SuperLink that found no message, and checks every 0.5 s whether the
ClientApp's reply is ready. Both are waits in every round: a round's instruction arrives, on
average, 1.5 s before the site notices it. Flower has no setting for either, so this entry point
runs the same SuperNode with that module's ``time.sleep`` capped at ``--poll`` seconds (fedit's
own polls, the server's pull of replies and the SuperExec's look for tasks, are 0.2 s). The
cost is more requests: an idle site asks the SuperLink for work 1 / poll times a second instead
of a third of a time.

If Flower's module is not laid out as expected (another Flower version), the SuperNode runs
unpatched, with one warning: the waits are a cost, never a correctness question.

    python -m fedit.engines.supernode_main --poll 0.2 -- <flower-supernode arguments>
"""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Sequence

log = logging.getLogger(__name__)

POLL_FLAG = "--poll"
PATCHED_MODULE = "flwr.supernode.start_client_internal"


def capped_time(poll_seconds: float) -> types.SimpleNamespace:
    """The ``time`` module as the SuperNode sees it, with ``sleep`` capped at ``poll_seconds``."""

    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, poll_seconds))

    namespace = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if k[0] != "_"})
    namespace.sleep = sleep
    return namespace


def patch_supernode(poll_seconds: float) -> bool:
    """Cap the SuperNode's waits at ``poll_seconds``; False (and a warning) where it can't."""
    import importlib

    module = importlib.import_module(PATCHED_MODULE)
    if getattr(module, "time", None) is not time:
        log.warning("%s has no time module to patch: the SuperNode polls every 3 s", PATCHED_MODULE)
        return False
    module.time = capped_time(poll_seconds)  # type: ignore[attr-defined]
    return True


def split_args(argv: Sequence[str]) -> tuple[float, list[str]]:
    """(poll seconds, Flower's arguments) from ``--poll S -- <flower arguments>``."""
    args = list(argv)
    if len(args) < 3 or args[0] != POLL_FLAG or args[2] != "--":
        raise SystemExit(f"usage: python -m {__name__} {POLL_FLAG} SECONDS -- <flower args>")
    poll = float(args[1])
    if not poll > 0:
        raise SystemExit(f"{POLL_FLAG}: must be > 0, got {args[1]}")
    return poll, args[3:]


def main(argv: Sequence[str] | None = None) -> None:
    poll, flower_args = split_args(sys.argv[1:] if argv is None else argv)
    patch_supernode(poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
