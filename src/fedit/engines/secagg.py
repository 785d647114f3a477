"""Secure aggregation (SecAgg+, Bell et al. 2020) built from Flower's primitives: the arithmetic.

Nothing here moves a message (``engines/flower_secagg.py`` does); every function is pure, so
the protocol is tested in one process with the real cryptography. No primitive is written
here: key pairs and their encoding (``flwr.supercore.primitives.asymmetric``), key agreement
and authenticated encryption (``...crypto.symmetric_encryption``: ECDH + HKDF, Fernet),
Shamir shares (``...crypto.shamir``, pycryptodome) and quantization (``...quantization``) are
Flower's; the mask stream is ChaCha20 from ``cryptography`` keyed through HKDF, because
Flower's own ``pseudo_rand_gen`` folds its seed to 32 bits for numpy's Mersenne Twister.

One round, for client i with neighbours N(i) (all other clients, or k of them for SecAgg+):

1. keys: two fresh EC key pairs, (sk1, pk1) for masks and (sk2, pk2) for encrypting shares;
2. shares: a fresh self-mask seed b_i; t-of-|N(i)| Shamir shares of b_i and of sk1_i, one
   pair per neighbour, encrypted under ECDH(sk2_i, pk2_j);
3. upload: the quantized vector [w_i, clipped_i, bit_i, q(w_i·Δ_i)] plus PRG(b_i) plus
   Σ_j ±PRG(ECDH(sk1_i, pk1_j)) over the neighbours whose shares it received, mod 2^32;
4. unmask: each survivor returns its shares of b_j for the surviving neighbours and of sk1_j
   for those that dropped after step 2; the server rebuilds them, removes the masks and has
   Σ_i over survivors of the quantized vectors, and nothing else.

The server learns nothing from the uploads as long as fewer than t clients collude with it
and it follows the protocol (honest but curious: public keys are not authenticated).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

MODULUS = 1 << 32
HEADER = ("weight", "clipped", "unclipped_bit")  # coordinates before the update's values
_MASK_INFO = b"fedit secagg mask v1"


class SecureAggregationError(RuntimeError):
    """A secure round that cannot be completed; the message names the clients."""


@dataclass(frozen=True)
class SecAggParams:
    """What every client of a round must agree on to produce summable vectors."""

    bits: int
    clipping_range: float
    threshold: int
    max_weight: float  # 0: uniform weights (DP)
    bit_range: float = 0.0  # adaptive clipping: the range of a noised clip bit; 0 when off
    count_clipped: bool = True  # the clipped-coordinate count is summed (never under DP)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        """One quantization step: the most one client's stochastic rounding is off by."""
        return 2 * self.clipping_range / self.levels

    def to_record(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "clipping_range": self.clipping_range,
            "threshold": self.threshold,
            "max_weight": self.max_weight,
            "bit_range": self.bit_range,
            "count_clipped": self.count_clipped,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SecAggParams:
        return cls(
            bits=int(record["bits"]),
            clipping_range=float(record["clipping_range"]),
            threshold=int(record["threshold"]),
            max_weight=float(record["max_weight"]),
            bit_range=float(record["bit_range"]),
            count_clipped=bool(record["count_clipped"]),
        )


# --- client side ----------------------------------------------------------------------------


def new_keys() -> tuple[dict[str, bytes], tuple[bytes, bytes]]:
    """Stage 1: the client's two private keys (kept) and public keys (sent)."""
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    private = {"sk1": private_key_to_bytes(sk1), "sk2": private_key_to_bytes(sk2)}
    return private, (public_key_to_bytes(pk1), public_key_to_bytes(pk2))


def _shared_key(private_key: bytes, public_key: bytes) -> bytes:
    return generate_shared_key(bytes_to_private_key(private_key), bytes_to_public_key(public_key))


def share_secrets(
    me: int, private: dict[str, bytes], pk2: dict[int, bytes], threshold: int
) -> tuple[bytes, bytes, dict[int, bytes]]:
    """Stage 2: a fresh self-mask seed, and each neighbour's encrypted shares of it and sk1.

    The seed is shared among the k neighbours and the client itself (Bonawitz et al.: a
    surviving client returns its own share too), so t may be up to k + 1; sk1 is needed only
    once the client is gone, so only its k neighbours hold shares of it.

    Returns:
        The seed b and the client's own share of it (both kept), and neighbour id ->
        ciphertext (sent through the server).
    """
    if threshold > len(pk2):
        raise SecureAggregationError(
            f"client {me}: {len(pk2)} neighbours cannot hold a {threshold}-of-n sharing"
        )
    seed = secrets.token_bytes(32)
    neighbours = sorted(pk2)
    *b_shares, own_share = create_shares(seed, threshold, len(neighbours) + 1)
    sk_shares = create_shares(private["sk1"], threshold, len(neighbours))
    ciphertexts = {}
    for j, b_share, sk_share in zip(neighbours, b_shares, sk_shares, strict=True):
        plaintext = share_keys_plaintext_concat(me, j, b_share, sk_share)
        ciphertexts[j] = encrypt(_shared_key(private["sk2"], pk2[j]), plaintext)
    return seed, own_share, ciphertexts


def open_shares(
    me: int, private: dict[str, bytes], pk2: dict[int, bytes], ciphertexts: dict[int, bytes]
) -> dict[int, tuple[bytes, bytes]]:
    """Stage 3, first: decrypt the shares the neighbours sent; src -> (b share, sk1 share).

    Raises:
        SecureAggregationError: a ciphertext from a non-neighbour, one that does not decrypt,
            or one addressed to someone else.
    """
    shares = {}
    for src, ciphertext in ciphertexts.items():
        if src not in pk2:
            raise SecureAggregationError(f"client {me}: shares from non-neighbour {src}")
        try:
            plaintext = decrypt(_shared_key(private["sk2"], pk2[src]), ciphertext)
        except Exception as err:  # cryptography's InvalidToken and friends
            raise SecureAggregationError(f"client {me}: shares from {src}: {err!r}") from None
        sender, receiver, b_share, sk_share = share_keys_plaintext_separate(plaintext)
        if (sender, receiver) != (src, me):
            raise SecureAggregationError(
                f"client {me}: shares from {src} name {sender}->{receiver}"
            )
        shares[src] = (b_share, sk_share)
    return shares


def pair_seeds(private: dict[str, bytes], pk1: dict[int, bytes]) -> dict[int, bytes]:
    """The pairwise mask seeds ECDH(sk1_i, pk1_j) with each neighbour j masked with."""
    return {j: _shared_key(private["sk1"], key) for j, key in pk1.items()}


def mask_stream(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform words mod 2^32: ChaCha20 under HKDF(seed), as uint64 for sums."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MASK_INFO).derive(seed)
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint64)


def encode(
    values: np.ndarray, examples: int, unclipped_bit: float, params: SecAggParams
) -> np.ndarray:
    """Stage 3, second: [n, clipped, q(bit), q(n/max_weight · Δ)] as integers in [0, 2^bits].

    The weight travels as the integer example count n (1 under DP's uniform weights), so
    Σ n_i is exact; the values are scaled by n / max_weight (at most 1 for an honest client)
    before quantizing, so the server's Σ(n_i/M·Δ_i) / (Σ n_i/M) is the weighted mean up to
    the rounding alone.
    """
    levels = params.levels
    examples = min(levels, max(0, int(examples)))
    scale = examples / params.max_weight if params.max_weight > 0 else 1.0
    scaled = values.astype(np.float64) * scale
    clipped = int(np.count_nonzero(np.abs(scaled) > params.clipping_range))
    if not params.count_clipped:
        clipped = 0
    (q_values,) = quantize([scaled], params.clipping_range, levels)
    q_bit = 0
    if params.bit_range > 0:
        (q_bit_array,) = quantize([np.array([unclipped_bit])], params.bit_range, levels)
        q_bit = int(q_bit_array[0])
    head = np.array([examples, min(clipped, levels), q_bit], dtype=np.int64)
    return np.concatenate([head, q_values.astype(np.int64)])


def masked_upload(update: Any, instruction: Any, spec: dict[str, Any]) -> bytes:
    """A trained ``ClientUpdate`` as the masked vector it uploads (``spec``: ``masking_spec``).

    Δ is taken over the tensors the client trains; its weight is its example count, or 1
    under DP's uniform weights; the adaptive-clipping bit is the one DP already noised.
    """
    from fedit.types import shared_names

    params = SecAggParams.from_record(spec["params"])
    names = shared_names(instruction.state, instruction.config)
    values = np.concatenate(
        [
            (update.state[n].detach().float().cpu() - instruction.state[n].float()).numpy().ravel()
            for n in names
        ]
    )
    examples = update.num_examples if params.max_weight > 0 else 1
    bit = float(update.metrics.get("dp_unclipped", 0.0))
    vector = encode(values, examples, bit, params)
    return mask(vector, int(spec["client"]), spec["seed"], spec["pairs"]).tobytes()


def mask(vector: np.ndarray, me: int, seed: bytes, seeds: dict[int, bytes]) -> np.ndarray:
    """vector + PRG(b) + Σ_j sign(i, j)·PRG(s_ij) mod 2^32, as uint32 (what is uploaded)."""
    total = vector.astype(np.uint64) + mask_stream(seed, len(vector))
    for j, pair_seed in seeds.items():
        stream = mask_stream(pair_seed, len(vector))
        total = total + stream if me < j else total + (MODULUS - stream)
        total %= MODULUS
    return (total % MODULUS).astype("<u4")


def unmask_reply(
    me: int,
    shares: dict[int, tuple[bytes, bytes]],
    active: list[int],
    dead: list[int],
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Stage 4: this client's shares of b_j for active j and of sk1_j for dead j.

    ``shares`` holds the neighbours' (b share, sk1 share) and this client's own b share
    under its own id (with an empty sk1 share: it is never asked for while it answers).

    Raises:
        SecureAggregationError: a client listed both active and dead (both secrets together
            would unmask that client's own upload), or this client listed dead.
    """
    both = sorted(set(active) & set(dead))
    if both or me in dead:
        raise SecureAggregationError(
            f"client {me}: unmask request lists {both or [me]} as both active and dead; refused"
        )
    b_shares = {j: shares[j][0] for j in active if j in shares}
    sk_shares = {j: shares[j][1] for j in dead if j in shares}
    return b_shares, sk_shares


# --- server side ----------------------------------------------------------------------------


def neighbourhoods(clients: list[int], k: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """Each client's k neighbours: all others, or SecAgg+'s ring of k over a random order
    (k/2 on each side; a symmetric relation, so masks pair up)."""
    if k >= len(clients) - 1:
        return {i: [j for j in clients if j != i] for i in clients}
    order = [clients[p] for p in rng.permutation(len(clients))]
    n = len(order)
    graph: dict[int, set[int]] = {i: set() for i in clients}
    for position, i in enumerate(order):
        for offset in range(1, k // 2 + 1):
            j = order[(position + offset) % n]
            graph[i].add(j)
            graph[j].add(i)
        if k % 2 and n % 2 == 0 and position < n // 2:  # odd k: the opposite client too
            j = order[position + n // 2]
            graph[i].add(j)
            graph[j].add(i)
    return {i: sorted(graph[i]) for i in clients}


def _recover(owner: int, shares: list[bytes], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise SecureAggregationError(
            f"cannot rebuild client {owner}'s {what}: {len(shares)} of {threshold} shares"
        )
    try:
        return combine_shares(shares[:threshold])
    except ValueError as err:
        raise SecureAggregationError(f"client {owner}'s {what}: {err}") from None


def unmask_sum(
    masked: dict[int, np.ndarray],
    masked_with: dict[int, list[int]],
    pk1: dict[int, bytes],
    b_shares: dict[int, list[bytes]],
    sk_shares: dict[int, list[bytes]],
    threshold: int,
) -> np.ndarray:
    """Σ of the survivors' encoded vectors (int64): their uploads minus every mask.

    Args:
        masked: survivor -> its upload.
        masked_with: every client that shared keys -> the neighbours it masked with.
        pk1: every client's mask public key.
        b_shares: survivor -> shares of its self-mask seed, from itself and its surviving
            neighbours.
        sk_shares: client that dropped after sharing -> shares of its sk1.
        threshold: t.

    Raises:
        SecureAggregationError: naming every client whose secret has fewer than t shares.
    """
    length = len(next(iter(masked.values())))
    total = np.zeros(length, dtype=np.uint64)
    for upload in masked.values():
        total = (total + upload.astype(np.uint64)) % MODULUS
    seeds_lacking = [i for i in masked if len(b_shares.get(i, [])) < threshold]
    dead = [i for i in masked_with if i not in masked and any(j in masked for j in masked_with[i])]
    keys_lacking = [i for i in dead if len(sk_shares.get(i, [])) < threshold]
    if seeds_lacking or keys_lacking:
        raise SecureAggregationError(
            f"cannot unmask the sum of clients {sorted(masked)}: fewer than "
            f"privacy.secagg.reconstruction_threshold={threshold} shares came back for the "
            f"self-masks of clients {sorted(seeds_lacking)} and the mask keys of dropped "
            f"clients {sorted(keys_lacking)}"
        )
    for i in masked:
        seed = _recover(i, b_shares[i], threshold, "self-mask seed")
        total = (total + (MODULUS - mask_stream(seed, length))) % MODULUS
    for i in dead:
        sk1 = _recover(i, sk_shares[i], threshold, "mask key")
        for j in masked_with[i]:
            if j not in masked:
                continue
            stream = mask_stream(_shared_key(sk1, pk1[j]), length)
            # j added sign(j, i)·PRG(s_ji); take it away.
            total = (total + (MODULUS - stream) if j < i else total + stream) % MODULUS
    return total.astype(np.int64)


@dataclass
class DecodedSum:
    """The unmasked sum, back in floats."""

    values: np.ndarray  # Σ w_i·Δ_i, dequantized
    weight: float  # Σ w_i: Σ n_i / max_weight, or the number of clients (uniform)
    clipped: int  # coordinates the range clipped, summed (0 when not counted)
    unclipped_bits: float  # Σ noised clip bits (adaptive clipping), else 0


def decode(total: np.ndarray, count: int, params: SecAggParams) -> DecodedSum:
    """Undo the quantization of a sum of ``count`` encoded vectors."""
    if np.any(total < 0) or np.any(total > count * params.levels):
        raise SecureAggregationError("the unmasked sum is out of range: an upload was forged")
    levels = params.levels
    (values,) = dequantize([total[len(HEADER) :]], params.clipping_range, levels)
    values = values - (count - 1) * params.clipping_range
    bits = 0.0
    if params.bit_range > 0:
        (bit_sum,) = dequantize([total[2:3]], params.bit_range, levels)
        bits = float(bit_sum[0]) - (count - 1) * params.bit_range
    weight = float(total[0]) / params.max_weight if params.max_weight > 0 else float(total[0])
    return DecodedSum(values, weight, int(total[1]), bits)


def error_bound(params: SecAggParams, count: int) -> float:
    """Per coordinate, how far the decoded sum can be from Σ w_i·Δ_i when nothing was
    clipped: each client's stochastic rounding moves its value by less than one step."""
    return count * params.step


def split(values: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A flat vector back into named arrays (``shapes`` in the order they were flattened)."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = values[offset : offset + size].reshape(shape)
        offset += size
    if offset != len(values):
        raise SecureAggregationError(f"vector has {len(values)} values, expected {offset}")
    return out
