"""The Flower transport: our messages through a SuperLink to the clients' SuperNodes and back.

With ``fedit/flower_app.py`` (the ServerApp and ClientApp) and ``engines/flower_roster.py``
(which node serves which client), the modules of the plain rounds that import ``flwr`` (the
``[flower]`` extra). A Flower Message carries exactly the bytes of ``engines.messages``
that the in-process engine sends: its content is one ArrayRecord holding one uint8 Array, so
both engines share one wire format, one reply check (``unpack_update``) and one byte count.
Flower moves every Array as its own object, one request or more each; one Array per message
keeps a message to a few requests.

The query before round 1 asks each SuperNode for its client id and number of examples; its
reply is a ConfigRecord of those two integers.

``engines.messages`` (and with it torch) is imported only where a message is packed or
checked: a ClientApp that forwards its bytes to the site worker (``engines/site_worker.py``)
imports this module without paying for torch in every message's fresh process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedit.config import Config, ConfigError, config_from_dict, save_config

if TYPE_CHECKING:
    from fedit.engines.flower_roster import Roster
    from fedit.server.measured import Exchange
    from fedit.types import ClientUpdate, FitInstruction, SecureSum

log = logging.getLogger(__name__)

RUN_CONFIG_KEY = "fedit-config"  # the resolved YAML of the experiment, in Flower's run config
MESSAGE_KEY = "fedit"  # the one ArrayRecord of a message's content
BYTES_KEY = "message"  # the one Array in it
STYPE = "fedit.message"  # Array.data is an engines.messages message
SITE_KEY = "site"  # the ConfigRecord of a query reply: client_id, num_examples
# Between pulls for replies. Flower's own send_and_receive sleeps 3 s, which a round pays on
# average 1.5 s of; a pull is one small request to the SuperLink.
POLL_SECONDS = 0.2


class FlowerRunError(RuntimeError):
    """The federation cannot start: clients missing or claimed twice."""


# --- our config <-> Flower's run config -----------------------------------------------------


def to_run_config(cfg: Config) -> dict[str, str]:
    """The run config ``flwr run`` submits: the resolved YAML as one string."""
    return {RUN_CONFIG_KEY: save_config(cfg)}


def from_run_config(run_config: dict[str, Any]) -> Config:
    """The inverse of ``to_run_config``."""
    if RUN_CONFIG_KEY not in run_config:
        raise ConfigError(f"Flower run config has no {RUN_CONFIG_KEY!r}: use fedit flower run")
    return config_from_dict(yaml.safe_load(str(run_config[RUN_CONFIG_KEY])))


# --- our bytes <-> Flower records -----------------------------------------------------------


def to_content(message: bytes) -> RecordDict:
    """A Flower message content that carries ``message`` (bytes of ``engines.messages``)."""
    array = Array(dtype="uint8", shape=(len(message),), stype=STYPE, data=message)
    return RecordDict({MESSAGE_KEY: ArrayRecord(array_dict={BYTES_KEY: array})})


def from_content(content: RecordDict) -> bytes:
    """The inverse of ``to_content``.

    Raises:
        ValueError: the content is not one ``fedit.message`` Array.
    """
    records = content.array_records
    record = records.get(MESSAGE_KEY)
    if list(records) != [MESSAGE_KEY] or record is None or list(record) != [BYTES_KEY]:
        raise ValueError(f"expected one {MESSAGE_KEY}/{BYTES_KEY} array, got {list(records)}")
    if record[BYTES_KEY].stype != STYPE:
        raise ValueError(f"expected a {STYPE} array, got {record[BYTES_KEY].stype!r}")
    return bytes(record[BYTES_KEY].data)


def update_from_content(content: RecordDict, instruction: FitInstruction) -> ClientUpdate:
    """Decode and check one reply to ``instruction`` (``unpack_update``, as in-process).

    ``metrics["bytes_up"]`` is the size of the message bytes it came in.

    Raises:
        MalformedReplyError: the content is not one message, or ``unpack_update`` refuses it.
    """
    from fedit.engines.messages import MalformedReplyError, unpack_update

    try:
        upload = from_content(content)
    except ValueError as err:
        raise MalformedReplyError(
            f"client {instruction.client_id}: malformed reply rejected: {err}"
        ) from None
    update = unpack_update(upload, instruction)
    update.metrics["bytes_up"] = len(upload)
    return update


def site_content(client_id: int, num_examples: int) -> RecordDict:
    """A SuperNode's answer to the query: which client it is and how much data it holds."""
    site = ConfigRecord({"client_id": client_id, "num_examples": num_examples})
    return RecordDict({SITE_KEY: site})


def site_from_content(content: RecordDict) -> tuple[int, int]:
    """The inverse of ``site_content``: (client id, number of training examples)."""
    site = content.config_records[SITE_KEY]
    return int(site["client_id"]), int(site["num_examples"])  # type: ignore[arg-type]


# --- the server side ------------------------------------------------------------------------


class FlowerTransport:
    """Sends each round's instructions to the clients' SuperNodes and collects the replies.

    It connects on first use (``client_sizes``, before round 1): it waits for a SuperNode per
    client id and asks each for its number of examples. Each reply's ``round_trip_seconds`` is
    the server's wall-clock time from pushing its instruction to pulling it, and
    ``last_exchange`` how the last training exchange went: what ``federation.system.profiles=
    measured`` times rounds by (``server.measured``). Which node serves which client is kept
    by a ``Roster``: a site restarted mid-run, which comes back as another node, is followed
    there (``engines/flower_roster.py``), and its ``bytes_down`` counts every send.
    """

    def __init__(self, cfg: Config, grid: Grid):
        self.cfg = cfg
        self.grid = grid
        self._roster: Roster | None = None
        self._sizes: dict[int, int] = {}
        self.last_exchange: Exchange | None = None

    def _connect(self) -> Roster:
        if self._roster is None:
            from fedit.engines.flower_roster import Roster

            nodes, self._sizes = connect_clients(self.grid, self.cfg)
            self._roster = Roster(nodes)
        return self._roster

    @property
    def client_sizes(self) -> list[int]:
        self._connect()
        return [self._sizes[client_id] for client_id in range(self.cfg.federation.num_clients)]

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        """One training round; a site that rejoins as another node while it is under way gets
        its instruction again (``engines/flower_roster.py``)."""
        from fedit.engines.messages import pack_instruction
        from fedit.server.measured import Exchange

        roster = self._connect()
        by_client = {i.client_id: i for i in instructions}
        downloads = {i.client_id: pack_instruction(i) for i in instructions}
        timeout = fit_timeout(self.cfg)
        started = time.monotonic()
        result = roster.train_round(
            self.grid, downloads, server_round, timeout, self.cfg.flower.rejoin_timeout
        )
        seconds = time.monotonic() - started
        updates = collect_updates(result.replies, by_client)
        for update in updates:
            # A site that rejoined downloaded its instruction once more.
            sent = len(downloads[update.client_id]) * result.sends[update.client_id]
            update.metrics["bytes_down"] = sent
            update.metrics["round_trip_seconds"] = result.arrived[update.client_id]
        unanswered = {
            client_id: len(download) * result.sends[client_id]
            for client_id, download in downloads.items()
            if client_id not in result.arrived
        }
        self.last_exchange = Exchange(seconds, unanswered, timeout)
        return sorted(updates, key=lambda u: u.client_id)

    def fit_secure(self, instructions: list[FitInstruction], server_round: int) -> SecureSum:
        """A SecAgg+ round (``engines/flower_secagg.py``): the sum of the clients' updates.

        Raises:
            RoundFailedError: the sum cannot be unmasked; the message names the clients.
        """
        from fedit.engines.flower_secagg import round_params, secure_fit
        from fedit.engines.secagg import SecureAggregationError
        from fedit.server.loop import RoundFailedError

        params = round_params(self.cfg, instructions, self.client_sizes)
        try:
            nodes = self._connect().nodes
            return secure_fit(self.grid, nodes, instructions, params, self.cfg, server_round)
        except SecureAggregationError as err:  # the run stops as for too few replies
            raise RoundFailedError(str(err)) from None


def fit_timeout(cfg: Config) -> float:
    """Seconds a training round waits for replies: ``flower.reply_timeout``, or the deadline.

    With measured times (``federation.system.profiles=measured``), ``federation.deadline`` is
    wall-clock seconds and replaces the reply timeout: the clients not heard from by then
    missed it (docs/systems.md).
    """
    federation = cfg.federation
    if federation.system.profiles == "measured" and federation.deadline is not None:
        return federation.deadline
    return cfg.flower.reply_timeout


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    arrived: dict[int, float] | None = None,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` seconds passed.

    ``grid.send_and_receive`` does the same but sleeps 3 s between pulls; this polls every
    ``POLL_SECONDS``. A message the SuperLink refused (id ``None``) simply gets no reply.
    ``arrived``, when given, gets each replying node's seconds from the push to the pull that
    brought its reply (so to within ``POLL_SECONDS``).
    """
    started = time.monotonic()
    deadline = started + timeout
    pending = {message_id for message_id in grid.push_messages(messages) if message_id}
    replies: list[Message] = []
    while pending:
        for reply in grid.pull_messages(sorted(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
            if arrived is not None:
                arrived[reply.metadata.src_node_id] = time.monotonic() - started
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return replies


def collect_updates(
    replies: dict[int, Message], instructions: dict[int, FitInstruction]
) -> list[ClientUpdate]:
    """Valid updates among ``replies`` (client id -> reply to its instruction); error replies
    and malformed ones are logged and dropped."""
    from fedit.engines.messages import MalformedReplyError

    updates = []
    for client_id, reply in sorted(replies.items()):
        instruction = instructions[client_id]
        if reply.has_error():
            log.warning("client %d failed: %s", client_id, reply.error.reason)
            continue
        try:
            updates.append(update_from_content(reply.content, instruction))
        except MalformedReplyError as err:
            log.warning("%s", err)
    return updates


def site_queries(node_ids: list[int]) -> list[Message]:
    """The site query, one message per node: each answers with its client id and examples."""
    return [
        Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node)
        for node in node_ids
    ]


def site_answer(reply: Message, node_id: int) -> tuple[int, int] | None:
    """(client id, examples) from a node's reply to the site query; None, logged, if it failed."""
    if reply.has_error():
        log.warning("node %d: %s", node_id, reply.error.reason)
        return None
    try:
        return site_from_content(reply.content)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("node %d: malformed query reply ignored: %s", node_id, err)
        return None


def _ask_sites(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, tuple[int, int]]:
    """node id -> (client id, examples) for the nodes that answered the query well."""
    answers = {}
    for reply in exchange(grid, site_queries(node_ids), timeout):
        node_id = reply.metadata.src_node_id
        if (answer := site_answer(reply, node_id)) is not None:
            answers[node_id] = answer
    return answers


def connect_clients(grid: Grid, cfg: Config) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for the SuperNodes and ask each for its client id and number of examples.

    Returns:
        client id -> node id, and client id -> training examples.

    Raises:
        FlowerRunError: some client ids 0..N-1 have no node within ``flower.connect_timeout``,
            or two nodes claim the same id.
    """
    wanted = set(range(cfg.federation.num_clients))
    deadline = time.monotonic() + cfg.flower.connect_timeout
    nodes: dict[int, int] = {}
    sizes: dict[int, int] = {}
    asked: set[int] = set()
    while True:
        new = [node for node in grid.get_node_ids() if node not in asked]
        if new:
            asked.update(new)
            wait = max(1.0, deadline - time.monotonic())
            for node_id, (client_id, num_examples) in _ask_sites(grid, new, wait).items():
                if client_id not in wanted:
                    log.warning(
                        "node %d: client id %d is not in [0, %d)", node_id, client_id, len(wanted)
                    )
                    continue
                if client_id in nodes:
                    raise FlowerRunError(f"client {client_id}: two SuperNodes claim this id")
                nodes[client_id], sizes[client_id] = node_id, num_examples
                log.info("client %d is node %d (%d examples)", client_id, node_id, num_examples)
        if wanted <= set(nodes) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not wanted <= set(nodes):
        raise FlowerRunError(
            f"clients {sorted(wanted - set(nodes))} have no SuperNode after "
            f"flower.connect_timeout={cfg.flower.connect_timeout:g}s "
            f"(connected: {sorted(nodes)})"
        )
    return nodes, sizes
