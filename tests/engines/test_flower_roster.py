"""A site restarted mid-run comes back as another node: the round follows it, nobody steals.

A scripted SuperLink (``SiteGrid``) lists nodes that come and go between pulls; the transport
and ``engines/flower_roster.py`` are the real ones.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Error, Message  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402

from fedit.config import ConfigError, load_config  # noqa: E402
from fedit.engines import flower, flower_roster  # noqa: E402
from fedit.engines.messages import pack_instruction, pack_update  # noqa: E402
from fedit.types import ClientUpdate, FitConfig, FitInstruction  # noqa: E402
from helpers import tiny_args  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _instruction(client_id: int) -> FitInstruction:
    generator = torch.Generator().manual_seed(client_id)
    state = {
        "layer.lora_A.weight": torch.randn(4, 8, generator=generator),
        "layer.lora_B.weight": torch.randn(8, 4, generator=generator),
    }
    return FitInstruction(client_id, state, FitConfig(lr=1e-3, rank=4, seed=client_id))


INSTRUCTIONS = [_instruction(0), _instruction(1)]


class SiteGrid:
    """A SuperLink whose nodes come and go: ``script[k]`` runs at the k-th look at the node ids.

    ``sites`` maps node id -> client id; a listed node answers the site query, and answers
    training if it is in ``answering``; a node in ``unavailable`` gets Flower's NODE_UNAVAILABLE
    reply, as the SuperLink gives for a node that missed its heartbeats.
    """

    def __init__(self, sites: dict[int, int], script: dict[int, object] | None = None):
        self.sites = sites
        self.listed = set(sites)
        self.answering = set(sites)
        self.unavailable: set[int] = set()
        self.script = script or {}
        self.pushed: dict[str, Message] = {}
        self.looks = 0

    def get_node_ids(self):
        self.looks += 1  # the transport looks once a loop here (NODE_POLL_SECONDS = 0)
        if self.looks in self.script:
            self.script[self.looks](self)  # type: ignore[operator]
        return sorted(self.listed)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"m{len(self.pushed)}"
            message.metadata.__dict__["_message_id"] = message_id
            self.pushed[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for message_id in message_ids:
            message = self.pushed[message_id]
            node = message.metadata.dst_node_id
            client = self.sites[node]
            if message.metadata.message_type == "query":
                if node in self.listed:
                    replies.append(Message(flower.site_content(client, 10), reply_to=message))
            elif node in self.unavailable:
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable")
                replies.append(Message(error=error, reply_to=message))
            elif node in self.listed and node in self.answering:
                update = ClientUpdate(client, INSTRUCTIONS[client].state, 12, 0.5, 2)
                upload = pack_update(update, INSTRUCTIONS[client])
                replies.append(Message(flower.to_content(upload), reply_to=message))
        return replies

    def training(self) -> list[tuple[int, bytes]]:
        """(node id, bytes) of every training message pushed, in order."""
        return [
            (m.metadata.dst_node_id, flower.from_content(m.content))
            for m in self.pushed.values()
            if m.metadata.message_type == "train"
        ]


@pytest.fixture
def fast_polls(monkeypatch, run_identity):
    monkeypatch.setattr(flower_roster, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(flower_roster, "NODE_POLL_SECONDS", 0.0)  # look at every pull


def _transport(
    tmp_path, grid: SiteGrid, reply_timeout: float = 5, *extra: str
) -> flower.FlowerTransport:
    items = ("federation.num_clients=2", "engine=flower", "flower.insecure=true")
    items += (f"flower.reply_timeout={reply_timeout}", *extra)
    cfg = load_config(QUICKSTART, tiny_args(Path("unused"), tmp_path, *items))
    transport = flower.FlowerTransport(cfg, grid)  # type: ignore[arg-type]
    assert transport.client_sizes == [10, 10]
    return transport


def _restarted(grid: SiteGrid) -> None:
    grid.sites[200] = 0  # client 0's SuperNode, started again: a new node id
    grid.listed.add(200)
    grid.answering.add(200)


def _old_node_gone(grid: SiteGrid) -> None:
    grid.listed.discard(100)  # the SuperLink marked the killed process offline


def test_a_restarted_site_gets_its_instruction_again_and_its_reply_counts(
    tmp_path, fast_polls, caplog
):
    grid = SiteGrid({100: 0, 101: 1}, script={3: _restarted, 8: _old_node_gone})
    grid.answering.discard(100)  # killed while it held its instruction
    transport = _transport(tmp_path, grid)
    with caplog.at_level(logging.INFO, logger="fedit.engines.flower_roster"):
        updates = transport.fit(INSTRUCTIONS, 2)
    assert [u.client_id for u in updates] == [0, 1]
    sent = grid.training()
    to_client_0 = [data for node, data in sent if node in (100, 200)]
    assert [node for node, _ in sent] == [100, 101, 200]
    assert to_client_0[0] == to_client_0[1]  # the same bytes again
    assert updates[0].metrics["bytes_down"] == 2 * len(to_client_0[0])  # downloaded twice
    assert updates[1].metrics["bytes_down"] == len(pack_instruction(INSTRUCTIONS[1]))
    # While node 100 was still listed, node 200's claim waited (one warning line).
    assert "node 200 claims client 0, which node 100 still serves" in caplog.text
    assert "client 0 rejoined as node 200 (was node 100)" in caplog.text
    grid.pushed.clear()
    assert [u.client_id for u in transport.fit(INSTRUCTIONS, 3)] == [0, 1]
    assert sorted(node for node, _ in grid.training()) == [101, 200]  # later rounds: node 200


def test_a_newcomer_does_not_take_a_live_sites_client(tmp_path, fast_polls, caplog):
    def answers_late(grid: SiteGrid) -> None:
        grid.answering.add(100)

    grid = SiteGrid({100: 0, 101: 1}, script={2: _restarted, 6: answers_late})
    grid.answering.discard(100)  # still training when node 200 claims its client
    transport = _transport(tmp_path, grid)
    updates = transport.fit(INSTRUCTIONS, 1)
    assert [u.client_id for u in updates] == [0, 1]
    assert updates[0].metrics["bytes_down"] == len(pack_instruction(INSTRUCTIONS[0]))
    assert caplog.text.count("node 200 claims client 0, which node 100 still serves") == 1
    assert "rejoined" not in caplog.text
    grid.pushed.clear()
    transport.fit(INSTRUCTIONS, 2)
    assert sorted(node for node, _ in grid.training()) == [100, 101]  # 200 is never sent one


def test_a_site_back_under_its_own_node_id_gets_its_instruction_again(tmp_path, fast_polls):
    # With SuperNode authentication a restarted site keeps its key, so its node id: Flower
    # reports the old process NODE_UNAVAILABLE, then lists the same id again.
    def offline(grid: SiteGrid) -> None:
        grid.unavailable.add(100)
        grid.listed.discard(100)

    def back(grid: SiteGrid) -> None:
        grid.unavailable.discard(100)
        grid.listed.add(100)
        grid.answering.add(100)

    grid = SiteGrid({100: 0, 101: 1}, script={3: offline, 6: back})
    grid.answering.discard(100)
    transport = _transport(tmp_path, grid)
    updates = transport.fit(INSTRUCTIONS, 1)
    assert [u.client_id for u in updates] == [0, 1]
    assert [node for node, _ in grid.training()] == [100, 101, 100]


@pytest.mark.parametrize(
    ("reply_timeout", "rejoin_timeout", "waits"),
    [(0.5, 120, (0.5, 5)), (5, 0.3, (0.3, 4)), (5, 0, (0, 4))],
    ids=["until the reply timeout", "for rejoin_timeout", "not at all"],
)
def test_a_lost_site_is_waited_for_rejoin_timeout_within_the_reply_timeout(
    tmp_path, fast_polls, reply_timeout, rejoin_timeout, waits
):
    # Flower's NODE_UNAVAILABLE does not end the wait for a client at once: it may come back,
    # for flower.rejoin_timeout seconds from when its node left (a site gone for good costs
    # each round that long, not the whole reply timeout).
    def gone(grid: SiteGrid) -> None:
        grid.unavailable.add(100)
        grid.listed.discard(100)

    grid = SiteGrid({100: 0, 101: 1}, script={2: gone})
    grid.answering.discard(100)
    transport = _transport(tmp_path, grid, reply_timeout, f"flower.rejoin_timeout={rejoin_timeout}")
    started = time.monotonic()
    updates = transport.fit(INSTRUCTIONS, 1)
    assert waits[0] <= time.monotonic() - started < waits[1]
    assert [u.client_id for u in updates] == [1]
    assert transport.last_exchange is not None
    assert list(transport.last_exchange.unanswered) == [0]


def test_a_negative_rejoin_timeout_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(
            QUICKSTART, ["engine=flower", "flower.insecure=true", "flower.rejoin_timeout=-1"]
        )
    assert err.value.problems == ["flower.rejoin_timeout: must be >= 0 seconds, got -1.0"]
