"""Flower's entry points for fedit: the ServerApp and the ClientApp (``fedit flower run``).

The ServerApp builds our Config from the run config and calls ``run_experiment`` with a
``FlowerTransport``: the round loop, strategy, evaluation and checkpoints are the in-process
ones. Each SuperNode runs the ClientApp, a fresh process per message: the query answers with
the site's client id and number of examples (loading only the tokenizer); a train message is
unpacked, trained by ``flower_site.train_site`` (the same ``fit_client`` as the simulation)
and packed, in the same bytes as in-process. The app's pyproject.toml names
``fedit.flower_app:server_app`` and ``:client_app`` (``engines/flower_launch.py``).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedit.engines.flower import (
    FlowerTransport,
    from_content,
    from_run_config,
    site_content,
    to_content,
)
from fedit.engines.messages import pack_update, unpack_instruction

log = logging.getLogger(__name__)

server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from fedit.experiment import run_experiment  # server-only: a ClientApp never imports it

    _log_to_stderr()
    cfg = from_run_config(dict(context.run_config))
    outcome = run_experiment(cfg, transport=FlowerTransport(cfg, grid))
    log.info("run finished: %s (%.1f s)", outcome.run_dir, outcome.seconds)


def _log_to_stderr() -> None:
    """fedit's log lines in the ServerApp's output, which ``flwr log`` and ``--stream`` show."""
    logger = logging.getLogger("fedit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fedit %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


client_app = ClientApp()


@client_app.query()
def _client_query(message: Message, context: Context) -> Message:
    from fedit.engines.flower_site import count_site_examples

    cfg = from_run_config(dict(context.run_config))
    client_id, num_examples = count_site_examples(cfg, dict(context.node_config))
    return Message(content=site_content(client_id, num_examples), reply_to=message)


@client_app.train()
def _client_train(message: Message, context: Context) -> Message:
    from fedit.engines.flower_site import train_site

    cfg = from_run_config(dict(context.run_config))
    instruction = unpack_instruction(from_content(message.content))
    update = train_site(cfg, dict(context.node_config), instruction)
    return Message(content=to_content(pack_update(update, instruction)), reply_to=message)
