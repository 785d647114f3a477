"""Flower's Grid in one process: every message goes to a real ClientApp, with a Context per node.

The ServerApp side (``FlowerTransport``) and the ClientApp (``flower_app.make_client_app``) are
the real ones; only the SuperLink between them is replaced, so a test can record every reply
the server receives (the probe of secure aggregation's tests) and make a node stop answering
at a chosen stage without starting processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, RecordDict

from fedit.flower_app import make_client_app

NODE_OFFSET = 100  # node id = client id + NODE_OFFSET


class LoopbackGrid:
    """Delivers each pushed message to the ClientApp at once; replies wait for a pull.

    ``silent(client, message)`` returning True makes that node give no reply (a dropout);
    ``received`` is every reply the server pulled, in order.
    """

    def __init__(
        self,
        cfg: Any,
        num_clients: int,
        silent: Callable[[int, Message], bool] | None = None,
        node_extras: dict[int, dict[str, Any]] | None = None,
    ):
        self.app = make_client_app(cfg, node_extras)
        self.silent = silent or (lambda client, message: False)
        self.contexts = {
            client: Context(
                run_id=1,
                node_id=client + NODE_OFFSET,
                node_config={"partition-id": client, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for client in range(num_clients)
        }
        self.replies: dict[str, Message] = {}
        self.sent: dict[str, Message] = {}  # message id -> what the server sent
        self.received: list[Message] = []
        self.count = 0

    def get_node_ids(self) -> list[int]:
        return [client + NODE_OFFSET for client in self.contexts]

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for message in messages:
            message_id = f"m{self.count}"
            self.count += 1
            message.metadata.__dict__["_message_id"] = message_id
            self.sent[message_id] = message
            client = message.metadata.dst_node_id - NODE_OFFSET
            if not self.silent(client, message):
                self.replies[message_id] = self.app(message, self.contexts[client])
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        pulled = [self.replies.pop(i) for i in message_ids if i in self.replies]
        self.received.extend(pulled)
        return pulled


def stage_of(message: Message) -> str:
    """The secure round's stage a message asks for ('keys', 'shares', 'train', 'unmask'),
    'train' for a plain training message, 'query' for the site query."""
    records = message.content.config_records
    if "fedit-secagg" in records:
        return str(records["fedit-secagg"]["stage"])
    return "train" if message.metadata.message_type == "train" else "query"
