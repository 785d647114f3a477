"""A SecAgg+ round over Flower's Grid: four exchanges, and the clients' side of each.

``engines/secagg.py`` has the arithmetic; this module moves it. Flower's own
``SecAggPlusWorkflow`` needs a legacy strategy, sends each client's example count and metrics
beside the masked vector, and halts on a dropout during key sharing
(``docs/design/secure-aggregation.md``); fedit drives the same primitives in its own round:

1. keys (QUERY): each client's two public keys;
2. shares (QUERY): each client gets its neighbours' public keys and returns its encrypted
   shares; the server keeps only the clients that answered, and forwards to each the shares
   addressed to it, so two clients mask with each other exactly when both shared;
3. train (TRAIN): the fedit instruction plus the forwarded shares; the client trains as ever
   and uploads only its masked vector (4 bytes a coordinate), nothing else;
4. unmask (QUERY): each survivor returns shares of the surviving neighbours' self-mask seeds
   and of the dropped neighbours' mask keys, never both for one client.

The client keeps its keys and shares between messages in Flower's ``context.state``, which a
SuperNode keeps per run (a deployment's ClientApp is a fresh process per message).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedit.config import Config
from fedit.config.secagg import MIN_CLIENTS, neighbourhood_size, reconstruction_threshold
from fedit.engines.flower import exchange, to_content
from fedit.engines.flower_secagg_client import (
    MASKED_KEY,
    MASKED_STYPE,
    SECAGG_KEY,
    blob,
    blob_list,
    config_record,
    int_list,
)
from fedit.engines.secagg import (
    SecAggParams,
    SecureAggregationError,
    decode,
    error_bound,
    split,
    unmask_sum,
)
from fedit.types import FitInstruction, SecureSum, shared_names

log = logging.getLogger(__name__)

DEFAULT_CLIPPING_RANGE = 0.25
RANGE_STDS = 8.0  # under DP the range is C + 8 client noise stds: P(clip) < 1e-15 a coordinate


def round_params(cfg: Config, instructions: list[FitInstruction], sizes: list[int]) -> SecAggParams:
    """The round's quantization, from the config and the round's DP fields (the threshold is
    set once the round's keys are in: ``secure_fit``)."""
    secagg, config = cfg.privacy.secagg, instructions[0].config
    share_std = 0.0
    if config.dp_noise_shares > 0:
        share_std = config.dp_noise_multiplier * config.dp_clip_norm
        share_std /= math.sqrt(config.dp_noise_shares)
    clipping_range = secagg.clipping_range
    if clipping_range is None:
        clipping_range = DEFAULT_CLIPPING_RANGE
        if config.dp_level == "client":
            clipping_range = config.dp_clip_norm + RANGE_STDS * share_std
    bit_range = 0.0
    if config.dp_count_noise_std > 0 and config.dp_noise_shares > 0:
        bit_std = config.dp_count_noise_std / math.sqrt(config.dp_noise_shares)
        bit_range = 1.0 + RANGE_STDS * bit_std
    uniform = config.dp_level != "none"
    return SecAggParams(
        bits=secagg.bits,
        clipping_range=clipping_range,
        threshold=reconstruction_threshold(secagg, len(instructions)),
        max_weight=0.0 if uniform else float(secagg.max_weight or max(sizes)),
        bit_range=bit_range,
        count_clipped=not uniform,
    )


def _stage(stage: str, server_round: int, client: int, **fields: Any) -> RecordDict:
    fields |= {"stage": stage, "round": server_round, "client": client}
    return RecordDict({SECAGG_KEY: config_record(fields)})


def _content_bytes(content: RecordDict) -> int:
    """What a message carries: the fedit message or masked vector, and the key material."""
    arrays = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    return arrays + sum(_payload_bytes(r) for r in content.config_records.values())


def _payload_bytes(record: ConfigRecord) -> int:
    """Key material in a record: the bytes values (what the protocol adds to a round)."""
    total = 0
    for value in record.values():
        if isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, list):
            total += sum(len(v) for v in value if isinstance(v, bytes))
    return total


class _Round:
    """The server's side of one secure round (see the module docstring)."""

    def __init__(self, grid: Grid, nodes: dict[int, int], timeout: float, server_round: int):
        self.grid, self.nodes, self.timeout, self.round = grid, nodes, timeout, server_round
        self.bytes_down = self.bytes_up = 0

    def ask(self, contents: dict[int, RecordDict], kind: str = MessageType.QUERY) -> dict:
        """Send each client its content; client -> the content of its good reply."""
        by_node = {self.nodes[c]: c for c in contents}
        messages = []
        for client, content in contents.items():
            self.bytes_down += _content_bytes(content)
            messages.append(
                Message(
                    content=content,
                    message_type=kind,
                    dst_node_id=self.nodes[client],
                    group_id=str(self.round),
                )
            )
        answers: dict[int, RecordDict] = {}
        for reply in exchange(self.grid, messages, self.timeout):
            sender = by_node.get(reply.metadata.src_node_id)
            if sender is None:
                continue
            if reply.has_error():
                log.warning("client %d failed in a secure round: %s", sender, reply.error.reason)
                continue
            answers[sender] = reply.content
            self.bytes_up += _content_bytes(reply.content)
        return answers


def secure_fit(
    grid: Grid,
    nodes: dict[int, int],
    instructions: list[FitInstruction],
    params: SecAggParams,
    cfg: Config,
    server_round: int,
) -> SecureSum:
    """One SecAgg+ round: the sum of the surviving clients' quantized updates, nothing else.

    Raises:
        SecureAggregationError: naming the clients whose secrets lack shares, or when fewer
            than t + 1 clients got through key sharing.
    """
    from fedit.engines.messages import pack_instruction

    run = _Round(grid, nodes, cfg.flower.reply_timeout, server_round)
    by_client = {i.client_id: i for i in instructions}
    keys = run.ask({c: _stage("keys", server_round, c) for c in by_client})
    pk1, pk2 = {}, {}
    for client, content in keys.items():
        try:
            record = content.config_records[SECAGG_KEY]
            pk1[client], pk2[client] = blob(record, "pk1"), blob(record, "pk2")
        except (KeyError, SecureAggregationError) as err:
            log.warning("client %d: malformed keys ignored: %s", client, err)
    silent = sorted(set(by_client) - set(pk1))
    if len(pk1) < MIN_CLIENTS:
        raise SecureAggregationError(
            f"round {server_round}: {len(pk1)} of {len(by_client)} clients sent keys (none from "
            f"{silent}); a secure round needs at least {MIN_CLIENTS}"
        )
    k = neighbourhood_size(cfg.privacy.secagg, len(pk1))
    params = dataclasses.replace(
        params, threshold=reconstruction_threshold(cfg.privacy.secagg, len(pk1))
    )
    if params.threshold > k:
        raise SecureAggregationError(
            f"round {server_round}: privacy.secagg.reconstruction_threshold={params.threshold} "
            f"exceeds the {k} neighbours each of this round's {len(pk1)} clients has"
        )
    rng = np.random.default_rng(secrets.randbits(128))
    graph = _neighbourhoods(sorted(pk1), k, rng)
    shares_asked = {
        c: _stage(
            "shares",
            server_round,
            c,
            threshold=params.threshold,
            neighbours=graph[c],
            pk1=[pk1[j] for j in graph[c]],
            pk2=[pk2[j] for j in graph[c]],
        )
        for c in graph
    }
    forwarded: dict[int, dict[int, bytes]] = {c: {} for c in graph}
    shared = set()
    for client, content in run.ask(shares_asked).items():
        record = content.config_records.get(SECAGG_KEY, ConfigRecord())
        try:
            destinations, ciphertexts = int_list(record, "dst"), blob_list(record, "ciphertexts")
        except SecureAggregationError:
            destinations, ciphertexts = [], []
        if sorted(destinations) != graph[client] or len(ciphertexts) != len(destinations):
            log.warning("client %d: malformed shares ignored", client)
            continue
        shared.add(client)
        for dst, ciphertext in zip(destinations, ciphertexts, strict=True):
            forwarded[dst][client] = ciphertext
    masked_with = {c: sorted(j for j in graph[c] if j in shared) for c in shared}
    # A seed's holders are the client and the neighbours it shared with: t of them must be.
    too_few = sorted(c for c in shared if len(masked_with[c]) + 1 < params.threshold)
    if len(shared) < MIN_CLIENTS or too_few:
        raise SecureAggregationError(
            f"round {server_round}: {len(shared)} of {len(pk1)} clients completed key sharing "
            f"(not {sorted(set(pk1) - shared)}); clients {too_few or sorted(shared)} are left "
            f"with fewer than privacy.secagg.reconstruction_threshold={params.threshold} "
            "holders of their shares"
        )
    names = shared_names(instructions[0].state, instructions[0].config)
    shapes = {n: tuple(instructions[0].state[n].shape) for n in names}
    length = 3 + sum(math.prod(s) for s in shapes.values())
    train_asked = {}
    for client in sorted(shared):
        content = to_content(pack_instruction(by_client[client]))
        srcs = [j for j in masked_with[client] if client in forwarded and j in forwarded[client]]
        stage = _stage(
            "train",
            server_round,
            client,
            srcs=srcs,
            ciphertexts=[forwarded[client][j] for j in srcs],
            **params.to_record(),
        )
        content.config_records[SECAGG_KEY] = stage.config_records[SECAGG_KEY]
        train_asked[client] = content
    masked = {}
    for client, content in run.ask(train_asked, MessageType.TRAIN).items():
        try:
            array = content.array_records[MASKED_KEY]["masked"]
            upload = np.frombuffer(array.data, dtype="<u4")
            if array.stype != MASKED_STYPE or len(upload) != length:
                raise ValueError(f"{len(upload)} words, expected {length}")
        except (KeyError, ValueError) as err:
            log.warning("client %d: malformed masked upload rejected: %s", client, err)
            continue
        masked[client] = upload
    dead = sorted(shared - set(masked))
    if dead:
        log.warning("round %d: clients %s dropped after key sharing", server_round, dead)
    if not masked:
        raise SecureAggregationError(f"round {server_round}: no masked upload arrived")
    unmask_asked = {
        c: _stage("unmask", server_round, c, active=sorted(masked), dead=dead) for c in masked
    }
    b_shares: dict[int, list[bytes]] = {}
    sk_shares: dict[int, list[bytes]] = {}
    for content in run.ask(unmask_asked).values():
        record = content.config_records.get(SECAGG_KEY, ConfigRecord())
        for owners, values, into in (
            ("b_owner", "b_share", b_shares),
            ("sk_owner", "sk_share", sk_shares),
        ):
            try:
                pairs = list(zip(int_list(record, owners), blob_list(record, values), strict=True))
            except (SecureAggregationError, ValueError) as err:
                log.warning("malformed unmask reply ignored: %s", err)
                continue
            for owner, share in pairs:
                into.setdefault(owner, []).append(share)
    try:
        total = unmask_sum(masked, masked_with, pk1, b_shares, sk_shares, params.threshold)
    except SecureAggregationError as err:
        raise SecureAggregationError(f"round {server_round}: {err}") from None
    decoded = decode(total, len(masked), params)
    delta_sum = {n: _tensor(v) for n, v in split(decoded.values, shapes).items()}
    metrics = {
        "bytes_down": run.bytes_down,
        "bytes_up": run.bytes_up,
        "bits": params.bits,
        "clipping_range": params.clipping_range,
        "quantization_step": params.step,
        "error_bound": error_bound(params, len(masked)),
        "dropped_after_key_sharing": len(dead),
    }
    if params.count_clipped:
        metrics["clipped_coordinates"] = decoded.clipped
    return SecureSum(sorted(masked), delta_sum, decoded.weight, decoded.unclipped_bits, metrics)


def _neighbourhoods(clients: list[int], k: int, rng: np.random.Generator) -> dict[int, list[int]]:
    from fedit.engines.secagg import neighbourhoods

    return neighbourhoods(clients, k, rng)


def _tensor(values: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
