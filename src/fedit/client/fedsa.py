"""FedSA-LoRA at the client (Guo et al., ICLR 2025): A is shared and averaged, B stays home.

In a round the server sends (A_global, B_init); the client swaps in its own B_i, kept in its
store under ``fedsa/lora_B/<key>`` (the first time, the received B: LoRA's seeded init, which
peft zero-fills and the server never moves), trains every factor, saves the raw B_i and
replies; the wire carries only A (``FitConfig.shared="lora_A"``, ``types.shared_names``).

At close the client publishes (A_global, B_i) as ``client-<id>`` and, when asked
(``FitConfig.report_local``: ``personalization.fedsa_global=mean_b``), reports B_i once as
``extras["local_lora_B"]``, from which the server builds an evaluation-only reference model. A
client that never trained holds B_init, whose model is the base model, so it publishes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peft import PeftModel

from fedit.client.state import ClientState, ClientStateStore, Stamp
from fedit.types import (
    LOCAL_LORA_B,
    AdapterState,
    ClientUpdate,
    FitInstruction,
    prefixed,
    unprefixed,
)

# The namespace of the client's own B_i in its ClientState.
FEDSA_B = "fedsa/lora_B"


def is_lora_b(name: str) -> bool:
    """Whether an adapter key is a LoRA B factor, (d_out, r)."""
    return ".lora_B." in name


@dataclass
class OwnB:
    """A fedsa client's B_i, read from its store for one instruction."""

    store: ClientStateStore
    stamp: Stamp
    kept: ClientState  # all the client keeps; other namespaces are saved back as they were
    own: AdapterState  # B_i; {} until the client first trains

    @classmethod
    def load(cls, instruction: FitInstruction, store: ClientStateStore | None) -> OwnB:
        """B_i from the newest committed state.

        Raises:
            ValueError: no store (an engine must give fedsa's clients one).
            StampError: the instruction carries no valid stamp.
        """
        if store is None:
            raise ValueError(f"client {instruction.client_id}: fedsa needs a state store")
        stamp = Stamp.of(instruction.config)
        kept = store.load(instruction.client_id, stamp)
        return cls(store, stamp, kept, unprefixed(FEDSA_B, kept))

    @property
    def trained(self) -> bool:
        """Whether the client has a B of its own (it trained in an earlier round)."""
        return bool(self.own)

    def start(self, received: AdapterState) -> AdapterState:
        """Where this round's training starts: the received A with the client's own B.

        Raises:
            ValueError: a kept B whose keys or shapes differ from the received adapter's.
        """
        if not self.trained:
            return received
        wanted = {name: t.shape for name, t in received.items() if is_lora_b(name)}
        if {name: t.shape for name, t in self.own.items()} != wanted:
            raise ValueError(
                f"{FEDSA_B}: the kept B does not match the received adapter's B "
                f"({len(self.own)} kept, {len(wanted)} received keys); start the run again"
            )
        return {name: self.own.get(name, tensor) for name, tensor in received.items()}

    def save(self, client_id: int, trained: AdapterState) -> None:
        """Keep the raw trained B as B_i for the next round, beside the other namespaces."""
        own_b = {name: tensor for name, tensor in trained.items() if is_lora_b(name)}
        others = {k: v for k, v in self.kept.items() if not k.startswith(f"{FEDSA_B}/")}
        self.store.save(client_id, self.stamp, others | prefixed(FEDSA_B, own_b))
        self.own = own_b


def close_fedsa(
    model: PeftModel,
    examples: Sequence[Any],
    instruction: FitInstruction,
    store: ClientStateStore | None,
) -> ClientUpdate:
    """fedsa's closing phase: publish (A_global, B_i); report B_i if the server asks.

    The reply's example count weighs the server's mean of the reports (it is stripped under
    DP, where the mean is uniform); ``metrics["published"]`` is 0 for a client that never
    trained, which has no B of its own and publishes nothing.
    """
    own_b = OwnB.load(instruction, store)
    client_id = instruction.client_id
    if not own_b.trained:
        return ClientUpdate(client_id, instruction.state, 0, 0.0, 0, {"published": 0.0})
    personal = own_b.start(instruction.state)
    own_b.store.publish(client_id, model, personal)
    update = ClientUpdate(
        client_id,
        personal,  # not sent: the instruction's shared=none keeps every key at home
        num_examples=len(examples) if instruction.config.report_local else 0,
        train_loss=0.0,
        num_steps=0,
        metrics={"published": 1.0},
    )
    if instruction.config.report_local:
        update.extras[LOCAL_LORA_B] = own_b.own
    return update
