"""Flower's entry points for fedit: the ServerApp and the ClientApp, for both Flower engines.

The ServerApp builds our Config from the run config and calls ``run_experiment`` with a
``FlowerTransport``: the round loop, strategy, evaluation and checkpoints are the in-process
ones. The ClientApp answers the query with the site's client id and number of examples
(loading only the tokenizer); a train message is unpacked, trained by
``flower_site.train_site`` (the same ``fit_client`` as the simulation) and packed, in the same
bytes as in-process.

``engine: flower`` (``fedit flower run``): the app's pyproject.toml names
``fedit.flower_app:server_app`` and ``:client_app`` (``engines/flower_launch.py``), which read
the config from Flower's run config. ``engine: flower-simulation``
(``engines/flower_simulation.py``) builds the same apps with ``make_server_app(cfg)`` and
``make_client_app(cfg)``, which carry the config themselves: Flower's simulation runtime gives
its apps an empty run config.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedit.config import Config
from fedit.engines.flower import (
    RUN_CONFIG_KEY,
    FlowerTransport,
    from_content,
    from_run_config,
    site_content,
    to_content,
)
from fedit.engines.flower_secagg_client import (
    SECAGG_KEY,
    client_stage,
    masked_content,
    masking_spec,
)
from fedit.engines.secagg import masked_upload
from fedit.engines.site_worker import SITE_WORKER_KEY

if TYPE_CHECKING:
    from fedit.experiment import RunOutcome
    from fedit.server.observer import RunObserver

log = logging.getLogger(__name__)

NodeExtras = dict[int, dict[str, Any]]  # partition id -> node config entries added to its own


def make_server_app(
    cfg: Config | None = None,
    observer: RunObserver | None = None,
    outcomes: list[RunOutcome] | None = None,
) -> ServerApp:
    """The ServerApp: ``cfg``, or the config in the run config when ``cfg`` is None.

    In the simulation the ServerApp is a thread of the caller: ``observer`` gets the progress
    hooks and the run's outcome is appended to ``outcomes``.
    """
    app = ServerApp()

    @app.main()
    def _server_main(grid: Grid, context: Context) -> None:
        from fedit.experiment import run_experiment  # server-only: a ClientApp never imports it

        if observer is None:
            _log_to_stderr()
        run_cfg = cfg if cfg is not None else from_run_config(dict(context.run_config))
        outcome = run_experiment(run_cfg, observer, transport=FlowerTransport(run_cfg, grid))
        log.info("run finished: %s (%.1f s)", outcome.run_dir, outcome.seconds)
        if outcomes is not None:
            outcomes.append(outcome)

    return app


def _log_to_stderr() -> None:
    """fedit's log lines in the ServerApp's output, which ``flwr log`` and ``--stream`` show."""
    logger = logging.getLogger("fedit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fedit %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def make_client_app(cfg: Config | None = None, node_extras: NodeExtras | None = None) -> ClientApp:
    """The ClientApp: ``cfg``, or the run config's; ``node_extras`` add node config entries
    per partition id (the simulation's virtual SuperNodes have only partition-id and
    num-partitions: ``malicious``, ``num-threads``, and the tests' ``test-fault``)."""
    app = ClientApp()
    extras = node_extras or {}

    def _site(context: Context) -> tuple[Config, dict[str, Any]]:
        run_cfg = cfg if cfg is not None else from_run_config(dict(context.run_config))
        node_config = dict(context.node_config)
        node_config.pop(SITE_WORKER_KEY, None)
        partition = node_config.get("partition-id")
        if isinstance(partition, int):
            node_config.update(extras.get(partition, {}))
        return run_cfg, node_config

    @app.query()
    def _client_query(message: Message, context: Context) -> Message:
        if SECAGG_KEY in message.content.config_records:  # a secure round's keys or shares
            reply = client_stage(message.content, context.state)
            return Message(content=reply, reply_to=message)
        from fedit.engines.flower_site import count_site_examples

        client_id, num_examples = count_site_examples(*_site(context))
        return Message(content=site_content(client_id, num_examples), reply_to=message)

    @app.train()
    def _client_train(message: Message, context: Context) -> Message:
        node_config = dict(context.node_config)
        masking = None  # under SecAgg: what masking the upload needs (its shares are kept)
        if SECAGG_KEY in message.content.config_records:
            masking = masking_spec(message.content, context.state)
        if cfg is None and SITE_WORKER_KEY in node_config:  # the site keeps its model there
            from fedit.engines.site_worker import train_remotely

            folder = str(node_config.pop(SITE_WORKER_KEY))
            run_config = str(context.run_config[RUN_CONFIG_KEY])
            reply = train_remotely(
                folder, run_config, node_config, from_content(message.content), masking
            )
        else:
            from fedit.engines.flower_site import train_site
            from fedit.engines.messages import pack_update, unpack_instruction

            run_cfg, node_config = _site(context)
            instruction = unpack_instruction(from_content(message.content))
            update = train_site(run_cfg, node_config, instruction)
            if masking is None:
                reply = pack_update(update, instruction)
            else:
                reply = masked_upload(update, instruction, masking)
        content = to_content(reply) if masking is None else masked_content(reply)
        return Message(content=content, reply_to=message)

    return app


server_app = make_server_app()
client_app = make_client_app()
