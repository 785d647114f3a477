"""One Flower site (SuperNode): its client id, its data, and one round of training.

Kept free of ``flwr`` so it can be tested without it; ``fedit/flower_app.py``'s ClientApp calls it.
A site names its data in its node config:

* ``data-path='/site/data.jsonl'`` (any format ``data.source`` accepts) and ``client-id=K``:
  a real deployment, every example in the file is training data;
* ``partition-id=K num-partitions=N``: a simulation-style run, partition K of the run's own
  data exactly as the in-process engine splits it (N must equal ``federation.num_clients``).

``malicious=true`` makes the site an attacker: it runs the run's ``attack`` section (poisoned
data, forged replies; ``client.attacks``), as ``attack.clients`` does in-process.

``min-noise-multiplier=Z`` and ``max-clip-norm=C`` are the site's privacy floor: it refuses an
instruction with weaker DP (``client.site_policy``); ``reproducible-noise=true`` is the site's
own opt-in to seeded noise (tests only). The run config, which the server writes, sets none of
them.

``state-dir=DIR`` is where a deployed site keeps its clients' state between rounds (SCAFFOLD's
c_i), in ``DIR/<run id>``; the default is ``$FEDIT_CACHE/site-state``. In Flower simulation the
state goes into the run folder, as in-process.

``num-threads=T`` sets torch's threads for training. SuperNodes that share one machine train at
once; each with torch's default (every core) makes them fight over the cores, which on 2 cores
made one training step several times slower.

``test-fault='nan'|'stall'|'crash'`` is for fedit's own tests only (``TEST_FAULTS``): it makes a
real site misbehave so that the server's handling can be checked end to end; with
``test-fault-round=K`` only in round K (the instruction's stamp, so only in runs that keep client
state). Never set either in a deployment.

The base model is loaded once per process and kept (``load_site``): a Ray actor of the
simulation engine and a deployment's site worker (``engines/site_worker.py``) serve many
messages, so each loads once per run. The cache key (``model_key``) is everything the loaded
model depends on: the site's ``model`` section, ``lora``, ``seed``, and the files of a local
model folder; another run with another key replaces it, so a stale model never trains.
Tokenized examples are cached too, keyed by the whole run config and node config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedit.client.attacks import poison_examples, site_attack
from fedit.client.fit import fit_client
from fedit.client.site_policy import SitePolicy, node_flag
from fedit.client.state import SITE_STATE, ClientStateStore, Stamp
from fedit.config import Config, ConfigError, ModelConfig, save_config
from fedit.data.prepare import prepare_data, tokenize_training
from fedit.data.sources import load_examples
from fedit.model.kernels import apply_kernels
from fedit.model.loading import cache_dir, load_model, load_tokenizer
from fedit.model.lora import apply_lora
from fedit.types import ClientUpdate, Example, FitInstruction

log = logging.getLogger(__name__)

TEST_FAULT_KEY = "test-fault"
TEST_FAULT_ROUND_KEY = "test-fault-round"  # the fault strikes only in this round
STATE_DIR_KEY = "state-dir"
# malicious=true makes this site run the run's ``attack`` section (docs/robustness.md).
MALICIOUS_KEY = "malicious"
# Test-only faults: "nan" trains, then replies with a NaN in the adapter (a malformed update);
# "stall" sleeps STALL_SECONDS before training, so that a test can kill the SuperNode while it
# holds its instruction; "crash" raises in the ClientApp, as a client's bug or OOM would.
TEST_FAULTS = ("nan", "stall", "crash")
STALL_SECONDS = 120.0


@dataclass
class Site:
    """A SuperNode's client id and its tokenized training examples."""

    client_id: int
    examples: list[Any]  # TokenizedExamples, or TokenizedPairs for DPO
    model: Any
    load_seconds: float  # 0 when the model came from this process's cache
    model_loaded: bool = False  # whether this call loaded the base model


@dataclass
class _Cache:
    """This process's base model (one: a site holds one run's model) and tokenized examples."""

    model_key: str = ""
    model: Any = None
    tokenizer: Any = None
    examples: dict[str, tuple[int, list[Any]]] = dataclasses.field(default_factory=dict)
    loads: int = 0  # base model loads in this process, for tests and benchmarks


_CACHE = _Cache()


def model_loads() -> int:
    """How many times this process has loaded a base model (cache misses)."""
    return _CACHE.loads


def clear_site_cache() -> None:
    """Drop the cached model and examples (tests; a site that wants its memory back)."""
    global _CACHE
    _CACHE = _Cache()


def _int_key(node_config: dict[str, Any], key: str) -> int:
    try:
        return int(node_config[key])
    except (TypeError, ValueError):
        raise ConfigError(
            f"node config {key}: expected an integer, got {node_config[key]!r}"
        ) from None


def site_examples(cfg: Config, node_config: dict[str, Any]) -> tuple[int, list[Example]]:
    """The client id and raw training examples named by the node config."""
    if "data-path" in node_config:
        if "client-id" not in node_config and "partition-id" not in node_config:
            raise ConfigError("node config: data-path needs client-id=K (this site's client id)")
        client_id = _int_key(
            node_config, "client-id" if "client-id" in node_config else "partition-id"
        )
        data = dataclasses.replace(
            cfg.data, source=str(node_config["data-path"]), test_source=None, max_examples=None
        )
        return client_id, load_examples(data, cfg.seed, cfg.train.objective == "dpo")
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config: give data-path='FILE' client-id=K, or partition-id=K num-partitions=N"
        )
    client_id = _int_key(node_config, "partition-id")
    num_partitions = _int_key(node_config, "num-partitions")
    if num_partitions != cfg.federation.num_clients:
        raise ConfigError(
            f"node config num-partitions={num_partitions} differs from "
            f"federation.num_clients={cfg.federation.num_clients}"
        )
    prepared = prepare_data(cfg)
    return client_id, [prepared.train[i] for i in prepared.parts[client_id]]


def _site_model_config(cfg: Config, node_config: dict[str, Any]) -> ModelConfig:
    if "model-name" in node_config:  # the site's own copy of the base model
        return dataclasses.replace(cfg.model, name=str(node_config["model-name"]))
    return cfg.model


def _checked_site_examples(cfg: Config, node_config: dict[str, Any]) -> tuple[int, list[Example]]:
    client_id, raw = site_examples(cfg, node_config)
    if not 0 <= client_id < cfg.federation.num_clients:
        raise ConfigError(
            f"node config: client id {client_id} is not in [0, federation.num_clients)"
        )
    fault = node_config.get(TEST_FAULT_KEY)
    if fault is not None and fault not in TEST_FAULTS:
        raise ConfigError(f"node config {TEST_FAULT_KEY}: {fault!r} is not one of {TEST_FAULTS}")
    if is_malicious(node_config):
        raw = poison_examples(raw, cfg.attack, cfg.seed, client_id)
    return client_id, raw


def is_malicious(node_config: dict[str, Any]) -> bool:
    """Whether the node config makes this site an attacker (``malicious=true``).

    Raises:
        ConfigError: a value that is not a boolean.
    """
    return node_flag(node_config, MALICIOUS_KEY)


def _tokenize(cfg: Config, raw: list[Example], tokenizer: Any) -> list[Any]:
    examples, _ = tokenize_training(cfg, raw, tokenizer)  # examples, or pairs for DPO
    return examples


def count_site_examples(cfg: Config, node_config: dict[str, Any]) -> tuple[int, int]:
    """The client id and the number of training examples ``load_site`` would give.

    For the server's query before round 1: it loads only the tokenizer, not the model.
    """
    client_id, raw = _checked_site_examples(cfg, node_config)
    tokenizer = load_tokenizer(_site_model_config(cfg, node_config))
    return client_id, len(_tokenize(cfg, raw, tokenizer))


def model_key(cfg: Config, node_config: dict[str, Any]) -> str:
    """Everything the site's loaded model depends on: base model (name, revision, dtype,
    quantization, start adapter ...), LoRA shape and targets, and the seed of its init."""
    model = _site_model_config(cfg, node_config)
    key: dict[str, Any] = {"model": dataclasses.asdict(model), "lora": dataclasses.asdict(cfg.lora)}
    key |= {"seed": cfg.seed, "files": _fingerprint(model.name), "adapter": model.adapter}
    if model.adapter:
        key["adapter_files"] = _fingerprint(model.adapter)
    return json.dumps(key, sort_keys=True, default=str)


def _fingerprint(name: str) -> list[tuple[str, int, int]]:
    """A local model folder's files (name, size, mtime): new weights under the same path
    change the key. A hub id has none (its revision is in the model section)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _examples_key(cfg: Config, node_config: dict[str, Any]) -> str:
    return json.dumps([save_config(cfg), sorted(node_config.items())], default=str)


def load_site(cfg: Config, node_config: dict[str, Any]) -> Site:
    """The base model with the run's LoRA and this site's tokenized examples.

    Both come from this process's cache when it holds them for this run: in a Ray actor (the
    simulation engine) or a site worker they load once. Without a site worker a deployment's
    ClientApp is a fresh process per message (Flower 1.42) and loads every round; the embedded
    model loads from its cached safetensors copy.
    """
    started = time.perf_counter()
    key = model_key(cfg, node_config)
    loaded = key != _CACHE.model_key
    if loaded:
        _CACHE.model_key, _CACHE.model = "", None  # the old model goes before the new one loads
        model_cfg = _site_model_config(cfg, node_config)
        base, _CACHE.tokenizer = load_model(model_cfg)
        apply_kernels(base, cfg.train.kernels, model_cfg.device)
        _CACHE.model = apply_lora(base, cfg.lora, seed=cfg.seed)
        _CACHE.model_key = key
        _CACHE.loads += 1
        _CACHE.examples.clear()  # tokenized with the old tokenizer
    examples_key = _examples_key(cfg, node_config)
    if examples_key not in _CACHE.examples:
        client_id, raw = _checked_site_examples(cfg, node_config)
        _CACHE.examples[examples_key] = client_id, _tokenize(cfg, raw, _CACHE.tokenizer)
    client_id, examples = _CACHE.examples[examples_key]
    seconds = time.perf_counter() - started
    log.info(
        "client %d: %d examples, %s in %.2f s",
        client_id,
        len(examples),
        "loaded" if loaded else "cached",
        seconds,
    )
    return Site(client_id, examples, _CACHE.model, seconds if loaded else 0.0, loaded)


def site_store(
    cfg: Config, node_config: dict[str, Any], instruction: FitInstruction
) -> ClientStateStore | None:
    """Where this site keeps client state: the run folder in Flower simulation (as
    in-process), ``state-dir``/<run id> when deployed; None for an unstamped instruction (the
    run keeps no client state).

    Raises:
        StampError: a stamp whose run id is not 32 hex digits.
    """
    if not instruction.config.state_run:
        return None
    if cfg.engine == "flower-simulation":
        return ClientStateStore.for_run(cfg.output_dir)
    state_dir = node_config.get(STATE_DIR_KEY) or cache_dir() / SITE_STATE
    return ClientStateStore.for_site(Path(str(state_dir)), Stamp.of(instruction.config).run_id)


def train_site(
    cfg: Config, node_config: dict[str, Any], instruction: FitInstruction
) -> ClientUpdate:
    """One round on this site: the same ``fit_client`` call as the in-process engine."""
    if "num-threads" in node_config:
        torch.set_num_threads(max(1, _int_key(node_config, "num-threads")))
    fault = _test_fault(node_config, instruction)
    if fault == "stall":
        log.warning("test-fault stall: sleeping %g s before training", STALL_SECONDS)
        time.sleep(STALL_SECONDS)
    if fault == "crash":
        raise RuntimeError("test-fault crash: the ClientApp raised")
    site = load_site(cfg, node_config)
    if instruction.client_id != site.client_id:
        raise ConfigError(
            f"instruction for client {instruction.client_id} reached client {site.client_id}"
        )
    attack = site_attack(cfg.attack, is_malicious(node_config))
    # The site's privacy floor and noise are its own node config's, never the run config's.
    policy = SitePolicy.from_node_config(node_config)
    store = site_store(cfg, node_config, instruction)
    update = fit_client(
        site.model, site.examples, cfg, instruction, attack=attack, policy=policy, store=store
    )
    if instruction.config.dp_level == "none":  # timings say nothing to add under DP either
        update.metrics["load_seconds"] = site.load_seconds
        update.metrics["model_loaded"] = float(site.model_loaded)
    if fault == "nan":
        name = sorted(update.state)[0]
        log.warning("test-fault nan: replying with NaN in %s", name)
        update.state[name] = update.state[name].clone().fill_(math.nan)
    return update


def _test_fault(node_config: dict[str, Any], instruction: FitInstruction) -> Any:
    """The test fault that strikes this instruction: ``test-fault``, in every round or in round
    ``test-fault-round`` only."""
    if TEST_FAULT_ROUND_KEY not in node_config:
        return node_config.get(TEST_FAULT_KEY)
    if _int_key(node_config, TEST_FAULT_ROUND_KEY) != instruction.config.server_round:
        return None
    return node_config.get(TEST_FAULT_KEY)
