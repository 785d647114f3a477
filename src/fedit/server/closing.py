"""The closing round of a personalized run: every client makes and keeps its own model.

With ``personalization.method`` set, after the last round (``federation.rounds = R``) the server
sends **every** client, not a sample, the final global adapter once more, stamped as round
R + 1, in an instruction whose ``phase`` is ``close`` and whose reply carries no adapter
(``shared=none``). The client makes its own model and publishes it in its store
(``client.personal``): ``RUN/personal/client-<id>/`` in-process and in Flower simulation, and
``STATE_DIR/<run id>/personal/client-<id>/`` at a deployed site, which never sends it. The
instructions go through ``transport.fit`` as a round's do, so both Flower engines move the same
bytes. A client's reply says only that it published: no loss, steps or example count, under
any privacy setting. The one exception is fedsa with ``fedsa_global`` resolving to ``mean_b``
(refused under client-level DP and secure aggregation), whose reply reports B_i and the
example count once, for the server's reference model.

``RUN/personalize.json`` is written last, as the phase's completion marker. A resumed run whose
rounds are all complete but which lacks it runs the closing round again; publishing is
idempotent (fixed seeds, atomic folders). The report's "Personalization" section reads it.

fedsa's server holds (A_global, B_init), the base model. With ``fedsa_global`` resolving to
``mean_b`` (``PersonalizationConfig.reports_b``) each client that trained reports its B_i once,
uncompressed; the server takes B_mean, their example-weighted mean (uniform when DP strips the
counts), scores (A_global, B_mean) once and writes it as ``global_adapter``: a reference point,
"FedSA global (A, mean B), reference only", not a model any client received, and not FedAvg of
the products B_i·A. With ``none`` no B leaves a client and ``global_adapter`` is
(A_global, B_init).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from fedit.client.state import stamp_instructions
from fedit.config import Config
from fedit.config.personalization import PersonalizationConfig
from fedit.io import atomic_write_json
from fedit.reporting.personalization import MARKER
from fedit.server.checkpoint import RunDir
from fedit.server.loop import round_lr
from fedit.server.privacy import PrivacyRun
from fedit.server.protocols import ServerModel, Transport
from fedit.strategy.aggregate import weighted_average
from fedit.strategy.selection import client_seed
from fedit.types import LOCAL_LORA_B, AdapterState, ClientUpdate, FitConfig, FitInstruction

log = logging.getLogger(__name__)

CLOSE_MARKER = MARKER
GLOBAL_ADAPTER = "global_adapter"  # RUN/global_adapter, which run_experiment writes


@dataclass
class Closing:
    """What the closing round leaves for ``run_experiment`` to write."""

    record: dict[str, Any] | None  # personalize.json's record; None without a method
    global_state: AdapterState  # global_adapter: the rounds' result, or fedsa's (A, mean B)


def closing_config(cfg: Config, client_id: int, lr: float, report_local: bool = False) -> FitConfig:
    """What a client obeys in the closing round: the method, no strategy extras, no upload
    (but fedsa's B when ``report_local``)."""
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
        report_local=report_local,
    )


def close_run(
    cfg: Config,
    transport: Transport,
    server: ServerModel,
    state: AdapterState,
    run_dir: RunDir,
    privacy: PrivacyRun | None = None,
) -> Closing:
    """Run the closing round (or read the marker of one that finished).

    Returns:
        ``personalize.json``'s record (the method, the round, who published, the bytes and,
        for fedsa, the server's reference model) and the adapter to write as
        ``global_adapter``; without a method, no record and ``state``.
    """
    personal = cfg.personalization
    if not personal.enabled:
        return Closing(None, state)
    marker = run_dir.path / CLOSE_MARKER
    if marker.is_file():
        log.info("personalization: the closing round finished before (%s)", marker)
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record.get("global", {}).get("b") == "mean":  # written before the marker
            state = server.load_adapter(run_dir.path / GLOBAL_ADAPTER)
        return Closing(record, state)
    server_round = cfg.federation.rounds + 1
    lr = personal.lr or round_lr(cfg, cfg.federation.rounds)
    clients = range(len(transport.client_sizes))
    private = cfg.privacy.level == "client" or cfg.privacy.secure_aggregation
    report_b = personal.reports_b(private)
    instructions = [
        FitInstruction(client_id=c, state=state, config=closing_config(cfg, c, lr, report_b))
        for c in clients
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
    if personal.method == "fedsa":
        state, record["global"] = fedsa_global(server, state, updates, report_b, personal)
        server.save_adapter(state, run_dir.path / GLOBAL_ADAPTER)  # a resume reads it back
    atomic_write_json(marker, record)
    log.info(
        "personalization (%s): %d clients published their own model",
        personal.method,
        len(published),
    )
    return Closing(record, state)


def mean_b(reports: list[tuple[AdapterState, int]]) -> tuple[AdapterState, str]:
    """B_mean = Σ_i n_i·B_i / Σ_i n_i over the reports (B_i, n_i), each B_i (d_out, r); uniform
    when any count is 0 (DP strips them). Returns the mean and which weights it used."""
    counts = [count for _, count in reports]
    uniform = not all(count > 0 for count in counts)
    weights = [1.0] * len(reports) if uniform else [float(count) for count in counts]
    return weighted_average((b for b, _ in reports), weights), "uniform" if uniform else "examples"


def fedsa_global(
    server: ServerModel,
    state: AdapterState,
    updates: list[ClientUpdate],
    report_b: bool,
    personal: PersonalizationConfig,
) -> tuple[AdapterState, dict[str, Any]]:
    """fedsa's reference model and its record: (A_global, B_mean) scored once, or with no
    reports (A_global, B_init) and no score."""
    b_keys = {name for name in state if ".lora_B." in name}
    reports = {u.client_id: u.extras[LOCAL_LORA_B] for u in updates if LOCAL_LORA_B in u.extras}
    partial = sorted(c for c, b in reports.items() if set(b) != b_keys)
    if partial:
        log.warning("fedsa: ignoring the B reports of clients %s, which lack keys", partial)
    counts = {u.client_id: u.num_examples for u in updates}
    complete = sorted(set(reports) - set(partial))
    if not report_b or not complete:
        why = f"personalization.fedsa_global={personal.fedsa_global}"
        if personal.fedsa_global == "auto":
            why += " (none under privacy.level=client or secure aggregation)"
        if report_b:
            why = "no client reported a B"
        return state, {"b": "init", "eval": None, "why": f"{why}: no B left a client"}
    mean, weights = mean_b([(reports[c], counts[c]) for c in complete])
    reference = {name: mean[name].to(t.dtype) if name in mean else t for name, t in state.items()}
    evaluation = server.evaluate(reference)
    log.info("fedsa: FedSA global (A, mean B of %d clients), reference only", len(complete))
    return reference, {"b": "mean", "clients": complete, "weights": weights, "eval": evaluation}
