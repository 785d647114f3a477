"""In-process simulation: every client trains in turn on one shared base model.

The base model is loaded once. A client is only a slice of tokenized data; "sending" the global
adapter to it means writing the LoRA tensors into the shared model before it trains. Every
instruction and reply still goes through ``engines.messages`` as bytes, the same bytes the
Flower engine sends, so communication is counted exactly, upload compression has its real
effect, and a malformed reply is refused as it would be from a remote client. What a client
keeps between rounds lives in the run folder's ``clients/`` (``client.state``), as it would at
a site.
"""

from __future__ import annotations

import logging
from typing import Any

from fedit.client.attacks import attacker_ids, site_attack
from fedit.client.fit import fit_client
from fedit.client.site_policy import InstructionRefusedError, SitePolicy
from fedit.client.state import ClientStateStore
from fedit.client.train import num_local_steps
from fedit.config import Config
from fedit.engines.messages import (
    MalformedReplyError,
    pack_instruction,
    pack_update,
    unpack_instruction,
    unpack_update,
)
from fedit.server.observer import RunObserver
from fedit.types import ClientUpdate, FitInstruction

log = logging.getLogger(__name__)


class SimulationTransport:
    """Runs clients sequentially in this process on a single PeftModel."""

    def __init__(
        self,
        cfg: Config,
        model: Any,
        client_data: list[Any],  # per client: TokenizedExamples, or TokenizedPairs for DPO
        observer: RunObserver | None = None,
    ):
        self.cfg = cfg
        self.model = model
        self.client_data = client_data
        self.observer = observer or RunObserver()
        # The malicious sites (attack.clients / attack.fraction); they run client.attacks.
        self.attackers = set(attacker_ids(cfg.attack, len(client_data), cfg.seed))
        # Every simulated site's privacy floor and noise source (privacy.site_*).
        self.policy = SitePolicy.from_config(cfg.privacy)
        # What the clients keep between rounds (SCAFFOLD's c_i): in the run folder.
        self.store = ClientStateStore.for_run(cfg.output_dir)

    @property
    def client_sizes(self) -> list[int]:
        """Training examples per client."""
        return [len(examples) for examples in self.client_data]

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        del server_round  # the instructions carry all a client needs
        updates = []
        for instruction in instructions:
            try:
                updates.append(self._fit_one(instruction))
            except (MalformedReplyError, InstructionRefusedError) as err:
                log.warning("%s", err)  # the round goes on without it, as over Flower
        return updates

    def _fit_one(self, instruction: FitInstruction) -> ClientUpdate:
        """One client's round trip: bytes down, ``fit_client``, bytes up."""
        client_id = instruction.client_id
        download = pack_instruction(instruction)
        received = unpack_instruction(download)  # what the client sees
        examples = self.client_data[client_id]
        self.observer.on_client_start(client_id, num_local_steps(self.cfg.train, len(examples)))
        attack = site_attack(self.cfg.attack, client_id in self.attackers)
        update = fit_client(
            self.model,
            examples,
            self.cfg,
            received,
            self.observer.on_step,
            attack=attack,
            policy=self.policy,
            store=self.store,
        )
        upload = pack_update(update, received)
        reply = unpack_update(upload, instruction)  # what the server sees
        reply.metrics.update(bytes_down=len(download), bytes_up=len(upload))
        self.observer.on_client_end(reply)
        return reply
