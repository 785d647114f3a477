"""A site's own privacy policy: the floor it holds the server to, and what its reply withholds.

An organisation should not have to trust the server's config. A site (a SuperNode's node
config, ``fedit flower supernode --min-noise-multiplier Z --max-clip-norm C``; in-process,
``privacy.site_min_noise_multiplier`` and ``privacy.site_max_clip_norm``) refuses any
instruction whose differential privacy is weaker than its floor, before it trains: a lower z,
a larger C, no DP at all, or noise that the server says it adds itself (``noise_at: server``),
which no site can check. The refusal is an error reply that names the site and the reason, and
the server logs it.

It also decides where the site's noise comes from (``NoiseSource``): secret entropy, unless
the site itself, not the server, opts into reproducible noise.

Under any ``privacy.level`` a reply carries the update and nothing that depends on the site's
data: ``public_reply`` zeroes the example count, training loss and step count and keeps only
the metrics in ``PRIVATE_REPLY_METRICS`` (the noised unclipped bit of adaptive clipping, a
noised share like the update itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.config import ConfigError, PrivacyConfig
from fedit.privacy.randomness import NoiseSource
from fedit.types import ClientUpdate, FitConfig

# The only metrics a reply may carry under DP: each is noised at the client like the update.
# "published": the closing round's answer (client.personal), which the server knows anyway:
# it chose who trained
PRIVATE_REPLY_METRICS = ("dp_unclipped", "published")

# Node-config keys of a Flower site's policy (``fedit flower supernode`` sets them).
MIN_NOISE_KEY = "min-noise-multiplier"
MAX_CLIP_KEY = "max-clip-norm"
REPRODUCIBLE_KEY = "reproducible-noise"


class InstructionRefusedError(ValueError):
    """An instruction weaker than the site's privacy floor; the message names the site."""


@dataclass(frozen=True)
class SitePolicy:
    """What a site demands of the instructions it obeys, and how it draws its noise."""

    min_noise_multiplier: float = 0.0  # 0: no floor on z
    max_clip_norm: float | None = None  # None: no ceiling on C
    reproducible_noise: bool = False  # the site's own opt-in to seeded noise (tests only)

    @property
    def has_floor(self) -> bool:
        return self.min_noise_multiplier > 0 or self.max_clip_norm is not None

    def check(self, config: FitConfig, client_id: int) -> None:
        """Refuse ``config`` if its privacy is weaker than this site's floor.

        Raises:
            InstructionRefusedError: naming the client and what fell short.
        """
        if not self.has_floor:
            return
        reason = self._shortfall(config)
        if reason is not None:
            ceiling = "none" if self.max_clip_norm is None else f"{self.max_clip_norm:g}"
            raise InstructionRefusedError(
                f"client {client_id} refused the instruction: {reason} (the site's floor: "
                f"{MIN_NOISE_KEY}={self.min_noise_multiplier:g}, {MAX_CLIP_KEY}={ceiling})"
            )

    def _shortfall(self, config: FitConfig) -> str | None:
        if config.dp_level == "none":
            return "it asks for no differential privacy"
        if config.dp_level == "client" and config.dp_noise_shares <= 0:
            return (
                "its noise is added at the server (privacy.noise_at=server), which a site "
                "cannot check"
            )
        if config.dp_noise_multiplier < self.min_noise_multiplier:
            return (
                f"its noise multiplier z={config.dp_noise_multiplier:.4g} is below "
                f"{self.min_noise_multiplier:g}"
            )
        if self.max_clip_norm is not None and config.dp_clip_norm > self.max_clip_norm:
            return f"its clip norm C={config.dp_clip_norm:.4g} exceeds {self.max_clip_norm:g}"
        return None

    def noise_source(self, instruction_seed: int) -> NoiseSource:
        """The site's randomness for one round: secret, or seeded only if the site opted in."""
        return NoiseSource(instruction_seed if self.reproducible_noise else None)

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SitePolicy:
        """A Flower site's policy from its own node config (never from the run config).

        Raises:
            ConfigError: a value that is not a positive number or a boolean, naming the key.
        """
        minimum = _positive(node_config, MIN_NOISE_KEY)
        return cls(
            min_noise_multiplier=minimum or 0.0,
            max_clip_norm=_positive(node_config, MAX_CLIP_KEY),
            reproducible_noise=node_flag(node_config, REPRODUCIBLE_KEY),
        )

    @classmethod
    def from_config(cls, privacy: PrivacyConfig) -> SitePolicy:
        """The in-process engine's sites: the run's ``privacy.site_*`` keys and
        ``privacy.reproducible_noise`` (the simulation is one party playing every site)."""
        return cls(
            min_noise_multiplier=privacy.site_min_noise_multiplier or 0.0,
            max_clip_norm=privacy.site_max_clip_norm,
            reproducible_noise=privacy.reproducible_noise,
        )

    def to_node_config(self) -> dict[str, Any]:
        """The node-config entries that ``from_node_config`` reads back."""
        entries: dict[str, Any] = {REPRODUCIBLE_KEY: self.reproducible_noise}
        if self.min_noise_multiplier > 0:
            entries[MIN_NOISE_KEY] = self.min_noise_multiplier
        if self.max_clip_norm is not None:
            entries[MAX_CLIP_KEY] = self.max_clip_norm
        return entries


def _positive(node_config: dict[str, Any], key: str) -> float | None:
    if key not in node_config:
        return None
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"node config {key}: expected a number > 0, got {node_config[key]!r}")
    return value


def node_flag(node_config: dict[str, Any], key: str) -> bool:
    """A boolean node-config entry (Flower passes ``true`` as a string or a bool); absent: False.

    Raises:
        ConfigError: a value that is not a boolean, naming the key.
    """
    value = node_config.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool):
        return value
    raise ConfigError(f"node config {key}: expected true or false, got {value!r}")


def public_reply(update: ClientUpdate, config: FitConfig) -> ClientUpdate:
    """Under DP, ``update`` stripped of everything per-client but the (noised) update itself.

    The example count, training loss and steps depend on the site's data, and so do its other
    metrics (DPO's rewards, token counts, timings); the server weighs clients uniformly under
    DP and needs none of them.
    """
    if config.dp_level == "none":
        return update
    update.num_examples = 0
    update.train_loss = 0.0
    update.num_steps = 0
    update.metrics = {k: v for k, v in update.metrics.items() if k in PRIVATE_REPLY_METRICS}
    return update
