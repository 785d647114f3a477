"""Which SuperNode serves which client, kept current while a training round waits.

A site restarted mid-run (its SuperNode killed and started again with the same node config)
comes back as another node. Flower 1.42's SuperNode without node authentication makes a new key
pair at every start, so the SuperLink registers it under a new node id
(``flwr/supernode/fleet_http_connection.py``); with authentication it keeps its key and node id,
and the SuperLink activates it again only once it has marked the old process offline. Either
way the instruction the old process held died with it.

While a round waits for its replies, ``train_round`` looks at the SuperLink's node ids every
NODE_POLL_SECONDS: it sends the site query of ``connect_clients`` to each node id it has never
asked, and follows the answers.

* **First come, no stealing.** A node that claims client c takes c over only once c's node is
  no longer among the SuperLink's node ids. Flower lists only nodes whose heartbeat is current:
  a SuperNode stopped cleanly leaves at once, a killed one after two missed heartbeats (60 s
  with Flower's defaults). Until then the claim is one warning line and is kept, so a second
  SuperNode started for a live site never receives that site's instructions.
* **The same bytes again.** An instruction is lost when its client's node left while it was
  unanswered (gone from the node ids, or Flower's NODE_UNAVAILABLE reply). It is sent again,
  the very bytes, as soon as the client has a listed node: the node that took it over, or the
  same node id back. The first reply of a client is its reply; a later one is dropped.
* **For the rest of the run.** The new node serves the client in later rounds. A query not
  answered by the end of the round is sent again in the next.

The site reads its kept state afresh each round (``client/state.py``), so a restarted site
trains exactly what it would have trained. Secure aggregation's rounds (``flower_secagg``) do
not follow rejoining sites: there a restarted site is a dropout of that round.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from flwr.app import Message, MessageType
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedit.engines.flower import POLL_SECONDS, site_answer, site_queries, to_content

log = logging.getLogger(__name__)

# Between looks for nodes that joined: one small request, far fewer than the pulls.
NODE_POLL_SECONDS = 1.0


@dataclass
class RoundReplies:
    """What one training round brought back, by client id."""

    replies: dict[int, Message]  # the first final reply of each client that gave one
    arrived: dict[int, float]  # seconds from the round's push to the pull that brought it
    sends: Counter[int]  # how many times each client's instruction was pushed


@dataclass
class _Round:
    grid: Grid
    downloads: dict[int, bytes]  # client id -> its instruction's bytes
    server_round: int
    started: float
    training: dict[str, int] = field(default_factory=dict)  # message id -> client id
    queries: dict[str, int] = field(default_factory=dict)  # message id -> node id
    rejoin_timeout: float = 0.0
    lost: dict[int, float] = field(default_factory=dict)  # client id -> when its node left
    result: RoundReplies = field(default_factory=lambda: RoundReplies({}, {}, Counter()))

    def waiting(self) -> bool:
        """Whether a client may still answer: one not lost, or lost under rejoin_timeout ago."""
        now = time.monotonic()
        return any(
            client_id not in self.lost or now - self.lost[client_id] < self.rejoin_timeout
            for client_id in self.unanswered()
        )

    def lose(self, client_id: int) -> None:
        """``client_id``'s node left with its instruction: wait rejoin_timeout for it, no more."""
        self.lost.setdefault(client_id, time.monotonic())

    def unanswered(self) -> list[int]:
        return sorted(set(self.downloads) - set(self.result.replies))

    def send(self, client_id: int, node_id: int) -> bool:
        """Push ``client_id``'s instruction to ``node_id``; False if the SuperLink refused it."""
        message = Message(
            content=to_content(self.downloads[client_id]),
            message_type=MessageType.TRAIN,
            dst_node_id=node_id,
            group_id=str(self.server_round),
        )
        [message_id] = self.grid.push_messages([message])
        if not message_id:
            return False
        self.training = {m: c for m, c in self.training.items() if c != client_id}
        self.training[message_id] = client_id
        self.result.sends[client_id] += 1
        return True

    def take(self, reply: Message) -> None:
        """File one pulled training reply."""
        client_id = self.training.pop(reply.metadata.reply_to_message_id)
        if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            self.lose(client_id)  # its node left with the instruction
        elif client_id in self.result.replies:
            log.info("client %d: a second reply this round dropped", client_id)
        else:
            self.result.replies[client_id] = reply
            self.result.arrived[client_id] = time.monotonic() - self.started
            self.training = {m: c for m, c in self.training.items() if c != client_id}


class Roster:
    """Client id -> node id for a run, and the nodes that claimed a client still served."""

    def __init__(self, nodes: dict[int, int]):
        self.nodes = nodes
        self.asked = set(nodes.values())
        self.claims: dict[int, int] = {}  # client id -> the node waiting to take it over
        self.listed: set[int] = set(nodes.values())

    def train_round(
        self,
        grid: Grid,
        downloads: dict[int, bytes],
        server_round: int,
        timeout: float,
        rejoin_timeout: float = 0.0,
    ) -> RoundReplies:
        """Send each client its instruction and pull replies until all came or ``timeout``.

        Pulls every ``POLL_SECONDS``; every ``NODE_POLL_SECONDS`` it looks for sites that
        rejoined (the module docstring's rules) and sends their lost instructions again. A
        client whose node left is waited for ``rejoin_timeout`` seconds from then, no longer:
        a site that died for good costs each round that long, not the whole ``timeout``.
        """
        started = time.monotonic()
        deadline = started + timeout
        state = _Round(grid, downloads, server_round, started, rejoin_timeout=rejoin_timeout)
        for client_id in downloads:
            if not state.send(client_id, self.nodes[client_id]):
                state.lose(client_id)
        next_look = started
        while state.waiting():
            if time.monotonic() >= next_look:
                self._look(state)
                next_look = time.monotonic() + NODE_POLL_SECONDS
            asked = sorted(state.training.keys() | state.queries.keys())
            for reply in grid.pull_messages(asked) if asked else []:
                message_id = reply.metadata.reply_to_message_id
                if message_id in state.queries:
                    self._claim(state, state.queries.pop(message_id), reply)
                elif message_id in state.training:
                    state.take(reply)
            if not state.waiting() or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        self.asked -= set(state.queries.values())  # asked again next round
        return state.result

    def _look(self, state: _Round) -> None:
        """Ask new nodes who they are, hand over clients whose node left, resend lost ones."""
        self.listed = set(state.grid.get_node_ids())
        new = sorted(self.listed - self.asked)
        if new:
            pushed = state.grid.push_messages(site_queries(new))
            for node_id, message_id in zip(new, pushed, strict=True):
                self.asked.add(node_id)
                if message_id:
                    state.queries[message_id] = node_id
        for client_id in state.unanswered():
            if self.nodes[client_id] not in self.listed:
                state.lose(client_id)
        for client_id, node_id in sorted(self.claims.items()):
            if node_id not in self.listed:
                del self.claims[client_id]  # the claimant left too
            elif self.nodes[client_id] not in self.listed:
                self._take_over(client_id, node_id)
        self._resend(state)

    def _resend(self, state: _Round) -> None:
        for client_id in sorted(state.lost):
            node_id = self.nodes[client_id]
            if node_id in self.listed and state.send(client_id, node_id):
                del state.lost[client_id]
                log.info("client %d: its instruction sent again, to node %d", client_id, node_id)

    def _claim(self, state: _Round, node_id: int, reply: Message) -> None:
        answer = site_answer(reply, node_id)
        if answer is None:
            return
        client_id = answer[0]
        if client_id not in self.nodes:
            log.warning("node %d: client id %d is not in this run", node_id, client_id)
        elif self.nodes[client_id] in self.listed:
            self.claims[client_id] = node_id
            log.warning(
                "node %d claims client %d, which node %d still serves: it takes over only "
                "once node %d leaves the SuperLink",
                node_id,
                client_id,
                self.nodes[client_id],
                self.nodes[client_id],
            )
        else:
            self._take_over(client_id, node_id)
            self._resend(state)

    def _take_over(self, client_id: int, node_id: int) -> None:
        log.info(
            "client %d rejoined as node %d (was node %d)", client_id, node_id, self.nodes[client_id]
        )
        self.nodes[client_id] = node_id
        self.claims.pop(client_id, None)
