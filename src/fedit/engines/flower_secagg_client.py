"""The client's side of a SecAgg+ round on Flower (the server's: ``engines/flower_secagg.py``).

A ClientApp answers the keys, shares and unmask messages with ``client_stage``, and a secure
train message with the masked vector (``masking_spec``, then ``secagg.masked_upload`` where
the site trains, and ``masked_content``). Between messages the client's keys, seed and the
shares it holds live in Flower's ``context.state``, which the SuperNode keeps for the run.
The records' typed accessors are shared with the server's side.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedit.engines.secagg import (
    SecAggParams,
    SecureAggregationError,
    new_keys,
    open_shares,
    pair_seeds,
    share_secrets,
    unmask_reply,
)

SECAGG_KEY = "fedit-secagg"  # the ConfigRecord of a stage message, and the client's state
MASKED_KEY = "fedit-masked"  # the ArrayRecord of a masked upload
MASKED_STYPE = "fedit.masked"


def int_value(record: ConfigRecord, key: str) -> int:
    value = record[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise SecureAggregationError(f"secure-round record {key}: expected an integer")
    return value


def _listed(record: ConfigRecord, key: str, kind: type) -> list[Any]:
    """A list of ``kind`` (absent = empty: Flower's records carry no empty lists here)."""
    value = record.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
        raise SecureAggregationError(f"secure-round record {key}: expected a list of {kind}")
    return list(value)


def int_list(record: ConfigRecord, key: str) -> list[int]:
    return _listed(record, key, int)


def blob(record: ConfigRecord, key: str) -> bytes:
    value = record[key]
    if not isinstance(value, bytes):
        raise SecureAggregationError(f"secure-round record {key}: expected bytes")
    return value


def blob_list(record: ConfigRecord, key: str) -> list[bytes]:
    return _listed(record, key, bytes)


def config_record(fields: dict[str, Any]) -> ConfigRecord:
    """A ConfigRecord of ``fields`` without the empty lists (their type would be lost)."""
    return ConfigRecord({key: value for key, value in fields.items() if value != []})


def _state(state: RecordDict, record: ConfigRecord) -> dict[str, Any]:
    """This client's secure-round state, checked to belong to the message's round and client."""
    saved = state.config_records.get(SECAGG_KEY)
    if saved is None or saved["round"] != record["round"] or saved["client"] != record["client"]:
        raise SecureAggregationError(
            f"client {record['client']!r}: {record['stage']!r} of round {record['round']!r} "
            "without its keys; refused"
        )
    return dict(saved)


def client_stage(content: RecordDict, state: RecordDict) -> RecordDict:
    """The client's answer to a keys, shares or unmask message (its state in ``state``)."""
    record = content.config_records[SECAGG_KEY]
    stage, me = record["stage"], int_value(record, "client")
    reply: dict[str, Any]
    if stage == "keys":
        private, public = new_keys()
        state.config_records[SECAGG_KEY] = config_record(
            {"round": int_value(record, "round"), "client": me, **private}
        )
        reply = {"pk1": public[0], "pk2": public[1]}
    elif stage == "shares":
        saved = _state(state, record)
        neighbours = int_list(record, "neighbours")
        their_pk2 = dict(zip(neighbours, blob_list(record, "pk2"), strict=True))
        private = {"sk1": saved["sk1"], "sk2": saved["sk2"]}
        seed, own_share, ciphertexts = share_secrets(
            me, private, their_pk2, int_value(record, "threshold")
        )
        saved |= {"seed": seed, "own_share": own_share, "neighbours": neighbours}
        saved |= {"pk1": blob_list(record, "pk1"), "pk2": blob_list(record, "pk2")}
        state.config_records[SECAGG_KEY] = config_record(saved)
        order = sorted(ciphertexts)
        reply = {"dst": order, "ciphertexts": [ciphertexts[j] for j in order]}
    elif stage == "unmask":
        saved = _state(state, record)
        if saved.get("unmasked"):
            raise SecureAggregationError(f"client {me}: a second unmask request; refused")
        kept = ConfigRecord(saved)
        sources = int_list(kept, "share_src")
        shares = dict(
            zip(
                sources,
                zip(blob_list(kept, "share_b"), blob_list(kept, "share_sk"), strict=True),
                strict=True,
            )
        )
        shares[me] = (blob(kept, "own_share"), b"")
        active, dead = int_list(record, "active"), int_list(record, "dead")
        b_shares, sk_shares = unmask_reply(me, shares, active, dead)
        state.config_records[SECAGG_KEY] = config_record(saved | {"unmasked": True})
        reply = {
            "b_owner": sorted(b_shares),
            "b_share": [b_shares[j] for j in sorted(b_shares)],
            "sk_owner": sorted(sk_shares),
            "sk_share": [sk_shares[j] for j in sorted(sk_shares)],
        }
    else:
        raise SecureAggregationError(f"client {me}: unknown secure-round stage {stage!r}")
    return RecordDict({SECAGG_KEY: config_record(reply)})


def masking_spec(content: RecordDict, state: RecordDict) -> dict[str, Any]:
    """From a train message: open the forwarded shares (kept for unmasking) and return what
    masking the upload needs: the params, this client's id, its seed and pairwise seeds."""
    record = content.config_records[SECAGG_KEY]
    saved = _state(state, record)
    kept = ConfigRecord(saved)
    me = int_value(record, "client")
    neighbours = int_list(kept, "neighbours")
    pk1 = dict(zip(neighbours, blob_list(kept, "pk1"), strict=True))
    pk2 = dict(zip(neighbours, blob_list(kept, "pk2"), strict=True))
    ciphertexts = dict(zip(int_list(record, "srcs"), blob_list(record, "ciphertexts"), strict=True))
    private = {"sk1": blob(kept, "sk1"), "sk2": blob(kept, "sk2")}
    shares = open_shares(me, private, pk2, ciphertexts)
    order = sorted(shares)
    saved |= {"share_src": order, "share_b": [shares[j][0] for j in order]}
    saved |= {"share_sk": [shares[j][1] for j in order]}
    state.config_records[SECAGG_KEY] = config_record(saved)
    params = {k: record[k] for k in SecAggParams.__dataclass_fields__}
    seeds = pair_seeds(private, {j: pk1[j] for j in shares})
    return {"client": me, "seed": blob(kept, "seed"), "pairs": seeds, "params": params}


def masked_content(upload: bytes) -> RecordDict:
    """The reply of a secure train message: the masked vector alone."""
    array = Array(dtype="uint32", shape=(len(upload) // 4,), stype=MASKED_STYPE, data=upload)
    return RecordDict({MASKED_KEY: ArrayRecord(array_dict={"masked": array})})
