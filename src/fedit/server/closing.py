"""The closing round of a personalized run: every client makes and keeps its own model.

With ``personalization.method`` set, after the last round (``federation.rounds = R``) the server
sends **every** client, not a sample, the final global adapter once more, stamped as round
R + 1, in an instruction whose ``phase`` is ``close`` and whose reply carries no adapter
(``shared=none``). The client makes its own model and publishes it in its store
(``client.personal``): ``RUN/personal/client-<id>/`` in-process and in Flower simulation, and
``STATE_DIR/<run id>/personal/client-<id>/`` at a deployed site, which never sends it. The
instructions go through ``transport.fit`` as a round's do, so both Flower engines move the same
bytes. A client's reply says only that it published: no loss, steps or example count, under
any privacy setting.

``RUN/personalize.json`` is written last, as the phase's completion marker. A resumed run whose
rounds are all complete but which lacks it runs the closing round again; publishing is
idempotent (fixed seeds, atomic folders). The report's "Personalization" section reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from fedit.client.state import stamp_instructions
from fedit.config import Config
from fedit.io import atomic_write_json
from fedit.reporting.personalization import MARKER
from fedit.server.checkpoint import RunDir
from fedit.server.loop import round_lr
from fedit.server.privacy import PrivacyRun
from fedit.server.protocols import Transport
from fedit.strategy.selection import client_seed
from fedit.types import AdapterState, FitConfig, FitInstruction

log = logging.getLogger(__name__)

CLOSE_MARKER = MARKER


def closing_config(cfg: Config, client_id: int, lr: float) -> FitConfig:
    """What a client obeys in the closing round: the method, no strategy extras, no upload."""
    personal = cfg.personalization
    return FitConfig(
        lr=lr,
        rank=cfg.lora.rank_of(client_id),
        seed=client_seed(cfg.seed, cfg.federation.rounds + 1, client_id),
        shared="none",
        personalization=personal.method,
        phase="close",
        lam=personal.lam,
        personal_steps=personal.personal_steps,
    )


def close_run(
    cfg: Config,
    transport: Transport,
    state: AdapterState,
    run_dir: RunDir,
    privacy: PrivacyRun | None = None,
) -> dict[str, Any] | None:
    """Run the closing round (or read the marker of one that finished); None without a method.

    Returns:
        ``personalize.json``'s record: the method, the round, who published and the bytes.
    """
    personal = cfg.personalization
    if not personal.enabled:
        return None
    marker = run_dir.path / CLOSE_MARKER
    if marker.is_file():
        log.info("personalization: the closing round finished before (%s)", marker)
        return json.loads(marker.read_text(encoding="utf-8"))
    server_round = cfg.federation.rounds + 1
    lr = personal.lr or round_lr(cfg, cfg.federation.rounds)
    clients = range(len(transport.client_sizes))
    instructions = [
        FitInstruction(client_id=c, state=state, config=closing_config(cfg, c, lr)) for c in clients
    ]
    if privacy is not None:  # a site's privacy floor checks every instruction it gets
        instructions = privacy.instruct(instructions)
    attempt = run_dir.attempt(server_round, resumed=False)
    instructions = stamp_instructions(
        instructions, dataclasses.replace(attempt, server_round=server_round)
    )
    log.info("personalization (%s): closing round for %d clients", personal.method, len(clients))
    updates = transport.fit(instructions, server_round)
    published = sorted(u.client_id for u in updates if u.metrics.get("published"))
    record = {
        "method": personal.method,
        "round": server_round,
        "published": published,
        "not_published": sorted(set(clients) - set(published)),
        "bytes_down": sum(int(u.metrics.get("bytes_down", 0)) for u in updates),
        "bytes_up": sum(int(u.metrics.get("bytes_up", 0)) for u in updates),
    }
    atomic_write_json(marker, record)
    log.info(
        "personalization (%s): %d clients published their own model",
        personal.method,
        len(published),
    )
    return record
