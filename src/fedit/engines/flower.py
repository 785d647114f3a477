"""The Flower engine: our round loop in a ServerApp, ``fit_client`` in a ClientApp.

The only module that imports ``flwr`` (the ``[flower]`` extra). The ServerApp builds our Config
from the run config, prepares the held-out test set and calls ``run_experiment`` with a
``FlowerEngine``, which moves instructions and replies through the SuperLink as Flower
Messages. Each SuperNode runs the ClientApp, a fresh process per message: it loads the base
model (the cached safetensors copy for the embedded model), applies LoRA with the run seed,
reads its site-local data (``node_config["data-path"]``) or its partition
(``partition-id`` / ``num-partitions``), and calls the same ``fit_client`` as the simulation.

A message's content is a RecordDict: ``header`` (a ConfigRecord with one JSON string: client id,
scalars, metrics) and one ArrayRecord per tensor part (``state``, ``extras.<name>``), each a
single Array that holds the part's tensors as a safetensors file. Only LoRA tensors travel.
Uploads are the bytes ``fedit.communication`` encodes in-process (fp32, or the compressed
change), so both engines train the same model.

Run it with ``fedit flower run CONFIG`` (see docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedit.communication import decode_state
from fedit.config import Config, ConfigError, config_from_dict, save_config
from fedit.engines.messages import encode_upload, merge_upload, update_header
from fedit.strategy.aggregate import validate_updates
from fedit.types import AdapterState, ClientUpdate, FitInstruction

if TYPE_CHECKING:  # server-only; a ClientApp process should not pay for these imports
    from fedit.engines.simulation import SimulationEngine
    from fedit.server.observer import RunObserver

log = logging.getLogger(__name__)

RUN_CONFIG_KEY = "fedit-config"  # the resolved YAML of the experiment, in Flower's run config
STYPE = "fedit.safetensors"  # Array.data is a safetensors file: all tensors of one part
PAYLOAD_KEY = "safetensors"  # the one Array in each part's ArrayRecord
_UPDATE_KEYS = ("client_id", "num_examples", "train_loss", "num_steps", "metrics", "compression")
# Between pulls for replies. Flower's own send_and_receive sleeps 3 s, which a round pays on
# average 1.5 s of; a pull is one small request to the SuperLink.
POLL_SECONDS = 0.2


class FlowerRunError(RuntimeError):
    """The federation cannot go on: clients missing, too few replies."""


class MalformedReplyError(ValueError):
    """A client's reply that cannot be aggregated; the message names the client."""


# --- our config <-> Flower's run config -----------------------------------------------------


def to_run_config(cfg: Config) -> dict[str, str]:
    """The run config ``flwr run`` submits: the resolved YAML as one string."""
    return {RUN_CONFIG_KEY: save_config(cfg)}


def from_run_config(run_config: dict[str, Any]) -> Config:
    """The inverse of ``to_run_config``."""
    if RUN_CONFIG_KEY not in run_config:
        raise ConfigError(f"Flower run config has no {RUN_CONFIG_KEY!r}: use fedit flower run")
    return config_from_dict(yaml.safe_load(str(run_config[RUN_CONFIG_KEY])))


# --- our types <-> Flower records -----------------------------------------------------------


def _to_record(part: AdapterState | bytes) -> ArrayRecord:
    """One Array holding the part's tensors as a safetensors file (or an encoded payload).

    Flower moves every Array as its own object, one request or more each: with an Array per
    LoRA tensor (240 for the quickstart) a message took seconds to cross loopback.
    """
    if isinstance(part, bytes):
        data = part
    else:
        data = save_safetensors({name: t.detach().cpu().contiguous() for name, t in part.items()})
    array = Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=data)
    return ArrayRecord(array_dict={PAYLOAD_KEY: array})


def _record_bytes(record: ArrayRecord) -> bytes:
    if list(record) != [PAYLOAD_KEY] or record[PAYLOAD_KEY].stype != STYPE:
        raise ValueError(f"expected one {STYPE} array {PAYLOAD_KEY!r}, got {list(record)}")
    return bytes(record[PAYLOAD_KEY].data)


def _from_record(record: ArrayRecord) -> AdapterState:
    data = _record_bytes(record)
    try:
        return dict(load_safetensors(data))
    except Exception as err:  # safetensors raises its own error type for corrupt bytes
        raise ValueError(f"corrupt safetensors part: {err}") from None


def _content(header: dict[str, Any], parts: dict[str, AdapterState | bytes]) -> RecordDict:
    records: dict[str, Any] = {"header": ConfigRecord({"json": json.dumps(header)})}
    records.update({name: _to_record(tensors) for name, tensors in parts.items()})
    return RecordDict(records)


def _header(content: RecordDict) -> dict[str, Any]:
    header = json.loads(str(content.config_records["header"]["json"]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def _extras(content: RecordDict) -> dict[str, AdapterState]:
    return {
        name.removeprefix("extras."): _from_record(record)
        for name, record in content.array_records.items()
        if name.startswith("extras.")
    }


def content_size(content: RecordDict) -> int:
    """Bytes of the content as Flower serialises it (protobuf)."""
    return int(recorddict_to_proto(content).ByteSize())


def instruction_to_content(instruction: FitInstruction) -> RecordDict:
    """What the server sends one client (downloads are never compressed)."""
    parts: dict[str, AdapterState | bytes] = {"state": instruction.state}
    parts.update({f"extras.{name}": extra for name, extra in instruction.extras.items()})
    return _content({"client_id": instruction.client_id, "config": instruction.config}, parts)


def instruction_from_content(content: RecordDict) -> FitInstruction:
    """The inverse of ``instruction_to_content``."""
    header = _header(content)
    state = _from_record(content.array_records["state"])
    return FitInstruction(header["client_id"], state, header["config"], _extras(content))


def update_to_content(update: ClientUpdate, received: FitInstruction) -> RecordDict:
    """A client's reply, encoded by ``fedit.communication`` as ``pack_update`` does in-process.

    Without compression the uploaded keys travel as fp32; otherwise the change from the
    received adapter, in the codec's own tensors (fp16, bf16, or int8 plus scales).
    """
    encoded, compression = encode_upload(update, received.state, received.config)
    parts: dict[str, AdapterState | bytes] = {"state": encoded}  # as encode_upload wrote it
    parts.update({f"extras.{name}": extra for name, extra in update.extras.items()})
    return _content(update_header(update, compression), parts)


def update_from_content(content: RecordDict, instruction: FitInstruction) -> ClientUpdate:
    """Decode and check one reply against the instruction it answers.

    Raises:
        MalformedReplyError: missing records or keys, a different client id, an undecodable
            payload, wrong shapes or non-finite values; the message names the client.
    """
    client_id = instruction.client_id
    try:
        header = _header(content)
        missing = [key for key in _UPDATE_KEYS if key not in header]
        if missing or "state" not in content.array_records:
            raise ValueError(f"missing {missing or ['state']}")
        if header["client_id"] != client_id:
            raise ValueError(f"reply claims client id {header['client_id']!r}")
        payload = decode_state(_record_bytes(content.array_records["state"]))
        update = ClientUpdate(
            client_id=client_id,
            state=merge_upload(instruction.state, payload, str(header["compression"])),
            num_examples=int(header["num_examples"]),
            train_loss=float(header["train_loss"]),
            num_steps=int(header["num_steps"]),
            metrics=dict(header["metrics"]),
            extras=_extras(content),
        )
        validate_updates(instruction.state, [update])
        if not math.isfinite(update.train_loss):
            raise ValueError(f"train_loss is {update.train_loss}")
    except (KeyError, TypeError, ValueError) as err:
        raise MalformedReplyError(f"client {client_id}: malformed reply rejected: {err}") from None
    return update


# --- the server side ------------------------------------------------------------------------


class FlowerEngine:
    """Sends each round's instructions to the clients' SuperNodes and collects the replies.

    Evaluation, the initial adapter and adapter files are the server's own, done by an
    in-process ``SimulationEngine`` that holds the base model and the held-out test set.
    """

    def __init__(self, cfg: Config, grid: Grid, evaluator: SimulationEngine):
        self.cfg = cfg
        self.grid = grid
        self.evaluator = evaluator
        self.num_clients = cfg.federation.num_clients
        self.nodes, self.sizes = connect_clients(grid, cfg)

    @property
    def client_sizes(self) -> list[int]:
        return [self.sizes[client_id] for client_id in range(self.num_clients)]

    def initial_state(self) -> AdapterState:
        return self.evaluator.initial_state()

    def evaluate(self, state: AdapterState | None) -> dict[str, Any]:
        return self.evaluator.evaluate(state)

    def save_adapter(self, state: AdapterState, path: Path) -> None:
        self.evaluator.save_adapter(state, path)

    def load_adapter(self, path: Path) -> AdapterState:
        return self.evaluator.load_adapter(path)

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        by_node = {self.nodes[i.client_id]: i for i in instructions}
        messages, sizes = [], {}
        for node_id, instruction in by_node.items():
            content = instruction_to_content(instruction)
            sizes[instruction.client_id] = content_size(content)
            messages.append(
                Message(
                    content=content,
                    message_type=MessageType.TRAIN,
                    dst_node_id=node_id,
                    group_id=str(server_round),
                )
            )
        timeout = self.cfg.flower.reply_timeout
        replies = exchange(self.grid, messages, timeout)
        updates = collect_updates(replies, by_node)
        for update in updates:
            update.metrics["bytes_down"] = sizes[update.client_id]
        answered = {u.client_id for u in updates}
        missing = sorted(i.client_id for i in instructions if i.client_id not in answered)
        needed = self.cfg.federation.min_fit_clients
        if len(updates) < needed:
            raise FlowerRunError(
                f"round {server_round}: {len(updates)} valid replies within "
                f"flower.reply_timeout={timeout:g}s, federation.min_fit_clients={needed}; "
                f"no usable reply from clients {missing}"
            )
        if missing:
            log.warning("round %d: going on without clients %s", server_round, missing)
        return sorted(updates, key=lambda u: u.client_id)


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` seconds passed.

    ``grid.send_and_receive`` does the same but sleeps 3 s between pulls; this polls every
    ``POLL_SECONDS``. A message the SuperLink refused (id ``None``) simply gets no reply.
    """
    deadline = time.monotonic() + timeout
    pending = {message_id for message_id in grid.push_messages(messages) if message_id}
    replies: list[Message] = []
    while pending:
        for reply in grid.pull_messages(sorted(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return replies


def collect_updates(
    replies: list[Message], by_node: dict[int, FitInstruction]
) -> list[ClientUpdate]:
    """Valid updates among ``replies``; error replies and malformed ones are logged and dropped."""
    updates = []
    for reply in replies:
        instruction = by_node.get(reply.metadata.src_node_id)
        if instruction is None:
            log.warning("reply from unexpected node %d dropped", reply.metadata.src_node_id)
            continue
        if reply.has_error():
            log.warning("client %d failed: %s", instruction.client_id, reply.error.reason)
            continue
        try:
            update = update_from_content(reply.content, instruction)
        except MalformedReplyError as err:
            log.warning("%s", err)
            continue
        update.metrics["bytes_up"] = content_size(reply.content)
        updates.append(update)
    return updates


def connect_clients(grid: Grid, cfg: Config) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for the SuperNodes and ask each for its client id and number of examples.

    Returns:
        client id -> node id, and client id -> training examples.

    Raises:
        FlowerRunError: some client ids 0..N-1 have no node within ``flower.connect_timeout``.
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
            messages = [
                Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=node)
                for node in new
            ]
            wait = max(1.0, deadline - time.monotonic())
            for reply in exchange(grid, messages, wait):
                if reply.has_error():
                    log.warning("node %d: %s", reply.metadata.src_node_id, reply.error.reason)
                    continue
                node_id = reply.metadata.src_node_id
                try:
                    header = _header(reply.content)
                    client_id, num_examples = int(header["client_id"]), int(header["num_examples"])
                except (KeyError, TypeError, ValueError) as err:
                    log.warning("node %d: malformed query reply ignored: %s", node_id, err)
                    continue
                if client_id not in wanted:
                    log.warning(
                        "node %d: client id %d is not in [0, %d)", node_id, client_id, len(wanted)
                    )
                    continue
                if client_id in nodes:
                    raise FlowerRunError(f"client {client_id}: two SuperNodes claim this id")
                nodes[client_id], sizes[client_id] = node_id, num_examples
                log.info("client %d is node %d (%d examples)", client_id, node_id, sizes[client_id])
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


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from fedit.experiment import PreparedData, build_engine, run_experiment

    _log_to_stderr()
    cfg = from_run_config(dict(context.run_config))

    def make_engine(
        cfg: Config, data: PreparedData, observer: RunObserver | None
    ) -> tuple[FlowerEngine, dict[str, int]]:
        evaluator, stats = build_engine(cfg, data, observer)
        return FlowerEngine(cfg, grid, evaluator), stats

    outcome = run_experiment(cfg, make_engine=make_engine)
    log.info("run finished: %s (%.1f s)", outcome.run_dir, outcome.seconds)


def _log_to_stderr() -> None:
    """fedit's log lines in the ServerApp's output, which ``flwr log`` and ``--stream`` show."""
    logger = logging.getLogger("fedit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fedit %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# --- the client side ------------------------------------------------------------------------

client_app = ClientApp()


@client_app.query()
def _client_query(message: Message, context: Context) -> Message:
    from fedit.engines.flower_site import count_site_examples

    cfg = from_run_config(dict(context.run_config))
    client_id, num_examples = count_site_examples(cfg, dict(context.node_config))
    header = {"client_id": client_id, "num_examples": num_examples}
    return Message(content=_content(header, {}), reply_to=message)


@client_app.train()
def _client_train(message: Message, context: Context) -> Message:
    from fedit.engines.flower_site import train_site

    cfg = from_run_config(dict(context.run_config))
    instruction = instruction_from_content(message.content)
    server_round = int(message.metadata.group_id)
    update = train_site(cfg, dict(context.node_config), instruction, server_round)
    return Message(content=update_to_content(update, instruction), reply_to=message)
