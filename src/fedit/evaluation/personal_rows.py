"""``compare.personalization``: personalized rows beside Local and FedIT, scored per client.

A personalized model is a different adapter for every client, so these rows are scored only on
each client's own test share (``per_client.score_clients`` loads client c's adapter before
scoring client c), never on the global held-out set.

- ``finetune``: for each client, FedIT's global adapter fine-tuned on the client's training
  data by the very call the closing round makes (``client.personal.finetune_train``, the
  closing round's learning rate and seed): the FedIT+finetune row costs no new federated run.
  Each client's adapter is saved to ``compare/adapters/finetune-<c>`` with a recipe marker, so
  a re-run reuses it, as the other baselines do.
- ``fedsa`` and ``ditto``: a whole run with ``personalization.method`` set in
  ``compare/runs/<method>/``, on the same split, seed and selection as FedIT's (reused or
  resumed like FedIT's own run). Each client is scored with the adapter it published; a client
  that never trained has none and is scored with the run's global adapter (Ditto's global
  model; fedsa's (A, mean B) reference, or the base model with ``fedsa_global=none``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedit.client.personal import finetune_train
from fedit.client.train import num_local_steps, train_local
from fedit.config import Config
from fedit.experiment import Setup
from fedit.io import atomic_write_json
from fedit.model.lora import load_adapter_state
from fedit.server.loop import round_lr
from fedit.server.observer import RunObserver
from fedit.strategy.selection import client_seed
from fedit.types import AdapterState

log = logging.getLogger(__name__)

MARKER = "personal_row.json"
DESCRIPTIONS = {
    "finetune": "FedIT's global adapter fine-tuned on each client's own data (FedIT+finetune)",
    "fedsa": "FedSA-LoRA: the shared A with each client's own B",
    "ditto": "Ditto: each client's personal adapter, pulled towards the global one by λ",
}
RUNS = "runs"  # compare/runs/<method>/: the personalized runs a row needs


def finetune_states(
    cfg: Config,
    setup: Setup,
    fedit_state: AdapterState,
    observer: RunObserver,
) -> tuple[dict[str, AdapterState], int]:
    """Client id (str) -> its FedIT+finetune adapter, and the steps they took in all."""
    rounds = cfg.federation.rounds
    lr = cfg.personalization.lr or round_lr(cfg, rounds)
    train = finetune_train(cfg)
    states: dict[str, AdapterState] = {}
    total = 0
    for client, examples in enumerate(setup.client_data):
        seed = client_seed(cfg.seed, rounds + 1, client)
        folder = Path(cfg.output_dir) / "compare" / "adapters" / f"finetune-{client}"
        recipe = _recipe(cfg, fedit_state, client, lr, seed)
        steps = num_local_steps(train, len(examples))
        total += steps
        marker = folder / MARKER
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == recipe:
            states[str(client)] = load_adapter_state(folder)
            continue
        observer.on_baseline_start(f"finetune-{client}", steps)
        update = train_local(
            setup.server.model,
            examples,
            train,
            client_id=client,
            lr=lr,
            seed=seed,
            global_state=fedit_state,
            progress=observer.on_step,
        )
        setup.server.save_adapter(update.state, folder)
        atomic_write_json(marker, recipe)
        states[str(client)] = update.state
    log.info("FedIT+finetune: %d clients, %d steps", len(states), total)
    return states, total


def _recipe(
    cfg: Config, fedit_state: AdapterState, client: int, lr: float, seed: int
) -> dict[str, Any]:
    """What a client's finetune adapter depends on besides FedIT's adapter's weights: the
    training settings, and a fingerprint of the adapter it starts from."""
    fingerprint = sum(float(t.double().abs().sum()) for t in fedit_state.values())
    return {
        "client": client,
        "lr": lr,
        "seed": seed,
        "train": cfg.to_dict()["train"],
        "personalization": cfg.to_dict()["personalization"],
        "start": round(fingerprint, 6),
    }


def method_run_states(
    cfg: Config, method: str, setup: Setup, observer: RunObserver
) -> tuple[dict[str, AdapterState], int]:
    """Client id (str) -> the adapter the method's run left each client, and its steps (Ditto:
    each participation's global run and personal run; fedsa: one run per participation).

    The run is ``cfg`` with ``personalization.method`` set, in ``compare/runs/<method>``.
    """
    import dataclasses

    from fedit.evaluation.compare import reusable
    from fedit.experiment import run_experiment

    folder = Path(cfg.output_dir) / "compare" / RUNS / method
    sub = dataclasses.replace(
        cfg,
        output_dir=str(folder),
        personalization=dataclasses.replace(cfg.personalization, method=method),
        compare=dataclasses.replace(cfg.compare, personalization=[], seeds=None),
        report_to=[],
    )
    outcome = run_experiment(reusable(sub), observer)
    fallback = load_adapter_state(outcome.run_dir / "global_adapter")
    states = {}
    for client in range(setup.num_clients):
        own = outcome.run_dir / "personal" / f"client-{client}"
        states[str(client)] = load_adapter_state(own) if own.is_dir() else fallback
    personal = cfg.personalization.personal_steps
    steps = sum(
        setup.local_steps(int(c))
        + (personal or setup.local_steps(int(c)) if method == "ditto" else 0)
        for record in outcome.history
        for c in record.get("train_loss", {})
    )
    log.info("%s: %d clients with their own adapter", method, len(states))
    return states, steps
