"""``Defended``: a strategy whose replies pass an attack simulation's collusion and a defence first.

The wrapper sits between the round loop and the configured strategy, so the loop and every
strategy stay as they are:

1. ``alie`` replies are forged from the honest ones (``client.attacks.collude``: the
   simulation's omniscient attacker);
2. the defence (``robust.method``) judges the replies (``verdicts.JUDGES``);
3. the strategy aggregates what the verdict keeps: the selected whole clients (FedAvg-style
   strategies then average their factors, ``exact`` their products), or one combined reply,
   re-factorised on the exact path (``combine``) or coordinate-wise.

Under a defence every client weighs the same (``verdicts.client_weights``): the selected
clients reach the strategy with ``num_examples`` 1, so its FedAvg does not re-weight them by
counts the server cannot check. ``updates`` themselves are not changed, so metrics.jsonl still
records what each client reported. With ``robust.method=none`` the strategy weighs by counts,
as FedIT does.

The round's ``aggregation`` metrics get ``attackers`` (the clients whose reply was marked as an
attack) and ``robust`` (method, path, every client's score and weight, the rejected clients and,
with an attack on, the round's detection counts). Each rejected client is logged in one line.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from fedit.client.attacks import ATTACK_METRIC, collude
from fedit.config import Config
from fedit.robust.combine import combine_products
from fedit.robust.defences import DefenceError
from fedit.robust.verdicts import JUDGES, Verdict, Weighting
from fedit.strategy.base import Strategy, Wrapping
from fedit.types import COMBINED_CLIENT_ID, AdapterState, ClientUpdate

log = logging.getLogger(__name__)


class Defended(Wrapping):
    """``inner`` with ``robust.method`` applied to its replies (and ALIE's collusion simulated).

    ``weighting`` is "uniform" in every run; "counts" restores the weighting by reported counts
    for benchmarks/inflate_count.py, which measures what that let one client do.
    """

    def __init__(self, cfg: Config, inner: Strategy, weighting: Weighting = "uniform"):
        super().__init__(cfg, inner)
        self.weighting = weighting

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, Any]]:
        collude(updates, self.cfg.attack)
        attackers = sorted(u.client_id for u in updates if u.metrics.get(ATTACK_METRIC))
        method = self.cfg.robust.method
        if method == "none":
            state, metrics = self.inner.aggregate_fit(server_round, global_state, updates)
            return state, {**metrics, "attackers": attackers}
        try:
            verdict = JUDGES[method](self.cfg.robust, global_state, updates, self.weighting)
        except DefenceError as error:
            log.warning("round %d: %s; global adapter unchanged", server_round, error)
            return global_state, {"skipped": str(error), "attackers": attackers}
        for index in verdict.rejected:
            log.warning(
                "round %d: robust.method=%s rejected client %d (score %.4g)",
                server_round,
                method,
                updates[index].client_id,
                verdict.scores[index],
            )
        state, metrics, path = self._aggregate(server_round, global_state, updates, verdict)
        report = _report(method, path, updates, verdict, attackers)
        return state, {**metrics, **verdict.metrics, "attackers": attackers, "robust": report}

    def _aggregate(
        self,
        server_round: int,
        global_state: AdapterState,
        updates: list[ClientUpdate],
        verdict: Verdict,
    ) -> tuple[AdapterState, dict[str, Any], str]:
        """The strategy's aggregation of what the verdict keeps, and which path it took."""
        weighed = _as_weighed(updates, self.weighting)
        if verdict.selected is not None:
            kept = [weighed[i] for i in verdict.selected]
            state, metrics = self.inner.aggregate_fit(server_round, global_state, kept)
            return state, metrics, "selection"
        extra: dict[str, float] = {}
        if verdict.state is not None:
            combined, path = verdict.state, "coordinate_wise"
        else:
            assert verdict.coefficients is not None  # a verdict always has one of the three
            generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + server_round)
            combined, extra = combine_products(
                global_state,
                [u.state for u in updates],
                verdict.coefficients,
                self.cfg.lora.r,
                generator,
                verdict.product_gram,
            )
            path = "combination_in_b" if "combine_exact_in_b" in extra else "combination_exact"
        reply = ClientUpdate(
            client_id=COMBINED_CLIENT_ID,
            state=combined,
            num_examples=sum(u.num_examples for u in weighed),
            train_loss=float("nan"),
            num_steps=0,
        )
        state, metrics = self.inner.aggregate_fit(server_round, global_state, [reply])
        return state, {**metrics, **extra}, path


def _as_weighed(updates: list[ClientUpdate], weighting: Weighting) -> list[ClientUpdate]:
    """The replies as the strategy should weigh them: copies with ``num_examples`` 1 when
    uniform (the strategy's FedAvg then gives each the same weight); as reported for "counts"."""
    if weighting == "counts":
        return updates
    return [dataclasses.replace(u, num_examples=1) for u in updates]


def _report(
    method: str,
    path: str,
    updates: list[ClientUpdate],
    verdict: Verdict,
    attackers: list[int],
) -> dict[str, Any]:
    """The round's defence record for metrics.jsonl: keyed by client id."""
    ids = [u.client_id for u in updates]
    rejected = sorted(ids[i] for i in verdict.rejected)
    report: dict[str, Any] = {
        "method": method,
        "path": path,
        "scores": {str(c): s for c, s in zip(ids, verdict.scores, strict=True)},
        "weights": {str(c): w for c, w in zip(ids, verdict.weights, strict=False)},
        "rejected": rejected,
    }
    if attackers:
        caught = len(set(rejected) & set(attackers))
        report["detection"] = {
            "true_positives": caught,
            "false_positives": len(rejected) - caught,
            "false_negatives": len(attackers) - caught,
        }
    return report


def defend(cfg: Config, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped in ``Defended`` when an attack or a defence is configured."""
    if cfg.robust.method == "none" and not cfg.attack.active:
        return strategy
    return Defended(cfg, strategy)
