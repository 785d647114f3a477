"""Where each party draws the randomness a DP guarantee rests on.

A Gaussian mechanism protects only if no adversary can reproduce its noise. So every draw
that an ε rests on (the server's noise, a client's noise share, DP-SGD's Poisson batches and
noise, and client selection when the accountant assumes it is random) comes from a
``NoiseSource``:

* by default a fresh generator per use, seeded with 128 bits from ``secrets`` (the operating
  system's CSPRNG): a CSPRNG-seeded generator, as Opacus's ``secure_mode`` seeds its own.
  Nothing in the run's config, nor anything the server sends, determines it; two runs with
  the same seed get different noise.
* with ``privacy.reproducible_noise: true`` (tests and debugging only), a generator seeded
  from the seed the caller supplies and a stream of integers naming the draw. Then anyone
  who holds that seed can subtract the noise, so every ε of such a run is reported void.

The generators are numpy's PCG64 (a 128-bit state); they are not themselves cryptographic,
but each is used for one release and its output is never observed without the data it masks.
Floating-point attacks on the Gaussian sampler's low bits (Mironov 2012) are not mitigated;
``docs/privacy.md`` says so.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from fedit.types import AdapterState

ENTROPY_BITS = 128

# Streams that keep each reproducible draw apart from the others drawn from the same seed.
SERVER_UPDATE_NOISE, SERVER_COUNT_NOISE, CLIENT_UPDATE_NOISE, CLIENT_COUNT_NOISE = 1, 2, 3, 4
EXAMPLE_NOISE, SELECTION = 5, 6


class NoiseSource:
    """One party's source of private randomness: secret by default, seeded only on request."""

    def __init__(self, reproducible_seed: int | None = None):
        self._seed = reproducible_seed

    @property
    def reproducible(self) -> bool:
        """Whether the draws follow from a known seed (every ε is then void)."""
        return self._seed is not None

    def generator(self, *stream: int) -> np.random.Generator:
        """A generator for one release: fresh secret entropy, or (seed, *stream)."""
        if self._seed is None:
            return np.random.default_rng(secrets.randbits(ENTROPY_BITS))
        return np.random.default_rng([self._seed, *(int(part) for part in stream)])

    def selection_seed(self, server_round: int) -> int:
        """A seed for one round's client selection: secret, or derived from (seed, round)."""
        if self._seed is None:
            return secrets.randbits(ENTROPY_BITS)
        return int(
            np.random.SeedSequence([self._seed, server_round, SELECTION]).generate_state(1)[0]
        )


def gaussian_noise(like: AdapterState, std: float, generator: np.random.Generator) -> AdapterState:
    """N(0, std²) per coordinate, fp32, shaped like ``like``, drawn in sorted key order."""
    return {
        name: torch.from_numpy(generator.standard_normal(tuple(like[name].shape), np.float32)) * std
        for name in sorted(like)
    }


def gaussian_scalar(std: float, generator: np.random.Generator) -> float:
    """One draw of N(0, std²)."""
    return float(generator.standard_normal()) * std
