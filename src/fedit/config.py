"""Experiment configuration: nested dataclasses, YAML loading, dotted overrides, one ConfigError.

Every field carries a one-line ``help`` that doubles as documentation for ``fedit validate`` and
``--help``. Problems are collected and reported together, spelled as on the command line
(``train.lr``), so a user fixes a config in one pass.

Example:
    cfg = load_config("configs/quickstart.yaml", ["federation.rounds=3", "train.lr=1e-3"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration or input problem that the user must fix. The CLI exits with code 2."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def _f(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (mutable defaults are wrapped in a factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda", "auto")
QUANTIZATIONS = ("none", "4bit", "8bit")
TEMPLATES = ("alpaca", "chat")
PARTITION_METHODS = ("iid", "dirichlet", "shards", "natural")
SELECTIONS = ("random", "weighted", "round_robin", "availability")
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "scaffold",
    "ffa_lora",
    "exact",
)
# Upload compression (fedit.communication implements them).
COMPRESSIONS = ("none", "fp16", "bf16", "int8", "int8_channel")
LR_SCHEDULES = ("constant", "cosine")
AUTOCAST = ("auto", "bf16", "fp16", "none")
ENGINES = ("simulation", "flower")


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    name: str = _f(
        "smollm2-135m-instruct",
        "Hugging Face hub id, local folder, or an embedded name (smollm2-135m-instruct)",
    )
    dtype: str = _f("fp32", "weight dtype: fp32, bf16 or fp16")
    device: str = _f("auto", "cpu, cuda or auto (cuda when available)")
    quantization: str = _f("none", "none, 4bit or 8bit (bitsandbytes, CUDA only)")
    revision: str | None = _f(None, "hub revision (branch, tag or commit)")
    trust_remote_code: bool = _f(False, "allow model code from the hub")

    def validate(self) -> list[str]:
        problems = _check_choice("model.dtype", self.dtype, DTYPES)
        problems += _check_choice("model.device", self.device, DEVICES)
        problems += _check_choice("model.quantization", self.quantization, QUANTIZATIONS)
        if not self.name:
            problems.append("model.name: must not be empty")
        return problems


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft). Defaults follow Shepherd."""

    r: int = _f(16, "LoRA rank")
    alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = _f(0.05, "dropout on the LoRA input")
    target_modules: str | list[str] = _f(
        ["q_proj", "v_proj"], "module names to adapt, or 'all-linear'"
    )
    client_ranks: list[int] | None = _f(
        None,
        "per-client LoRA ranks, cycled over clients (client i gets client_ranks[i % len]); "
        "each <= lora.r; mixed ranks need strategy.name=exact",
    )

    def rank_of(self, client_id: int) -> int:
        """The LoRA rank client ``client_id`` trains with (``r`` unless client_ranks is set)."""
        if not self.client_ranks:
            return self.r
        return self.client_ranks[client_id % len(self.client_ranks)]

    def validate(self) -> list[str]:
        problems = []
        for rank in self.client_ranks or []:
            if not 1 <= rank <= self.r:
                problems.append(f"lora.client_ranks: {rank} is not in [1, lora.r={self.r}]")
        if self.r < 1:
            problems.append(f"lora.r: must be >= 1, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"lora.alpha: must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if not self.target_modules:
            problems.append("lora.target_modules: must name at least one module or 'all-linear'")
        return problems


@dataclass
class ColumnsConfig:
    """Map the source's column names onto instruction / input / output / category.

    Leave a field empty to auto-detect the Dolly (instruction, context, response, category) or
    Alpaca (instruction, input, output) schema.
    """

    instruction: str | None = _f(None, "column holding the instruction")
    input: str | None = _f(None, "column holding the optional input/context")
    output: str | None = _f(None, "column holding the reference response")
    category: str | None = _f(None, "column holding the task category")


@dataclass
class PartitionConfig:
    """How the training examples are split across clients."""

    method: str = _f("shards", "iid, dirichlet, shards (Shepherd) or natural")
    by: str = _f("category", "label column for dirichlet, shards and natural")
    alpha: float = _f(0.5, "Dirichlet concentration; smaller is more skewed")
    min_per_client: int = _f(1, "dirichlet: resample until every client has this many examples")
    shards_per_client: int = _f(2, "shards: shards each client receives (Shepherd uses 2)")

    def validate(self) -> list[str]:
        problems = _check_choice("data.partition.method", self.method, PARTITION_METHODS)
        if self.alpha <= 0:
            problems.append(f"data.partition.alpha: must be > 0, got {self.alpha}")
        if self.min_per_client < 0:
            problems.append(
                f"data.partition.min_per_client: must be >= 0, got {self.min_per_client}"
            )
        if self.shards_per_client < 1:
            problems.append(
                f"data.partition.shards_per_client: must be >= 1, got {self.shards_per_client}"
            )
        return problems


@dataclass
class SyntheticConfig:
    """The embedded procedurally generated instruction suite."""

    num_examples: int = _f(2000, "examples to generate (spread evenly over the categories)")
    categories: list[str] | None = _f(None, "subset of categories to use (default: all)")

    def validate(self) -> list[str]:
        if self.num_examples < 1:
            return [f"data.synthetic.num_examples: must be >= 1, got {self.num_examples}"]
        return []


@dataclass
class DataConfig:
    """Where the instructions come from and how they are turned into training tokens."""

    source: str = _f(
        "synthetic", "synthetic, a hub dataset id, or a .json/.jsonl/.csv/.parquet file or folder"
    )
    split: str = _f("train", "split to read from a hub dataset")
    subset: str | None = _f(None, "hub dataset configuration name")
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    template: str = _f("alpaca", "prompt template: alpaca (Shepherd) or chat (tokenizer's own)")
    test_per_category: int = _f(
        10, "held-out test examples per category, taken before partitioning"
    )
    test_source: str | None = _f(None, "separate test file or hub dataset (instead of holding out)")
    max_examples: int | None = _f(None, "use only the first N examples after shuffling")
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> list[str]:
        problems = _check_choice("data.template", self.template, TEMPLATES)
        if self.test_per_category < 0:
            problems.append(f"data.test_per_category: must be >= 0, got {self.test_per_category}")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"data.max_examples: must be >= 1, got {self.max_examples}")
        return problems + self.partition.validate() + self.synthetic.validate()


@dataclass
class TrainConfig:
    """Local training on each client."""

    local_steps: int | None = _f(None, "optimizer steps per client per round (overrides epochs)")
    local_epochs: float = _f(1.0, "passes over the client's data per round, if local_steps unset")
    batch_size: int = _f(8, "examples per optimizer step")
    micro_batch_size: int = _f(
        8, "examples per forward pass; batch_size / this = grad accumulation"
    )
    lr: float = _f(3e-4, "peak learning rate (AdamW)")
    lr_min: float = _f(0.0, "final learning rate of the cosine schedule across rounds")
    lr_schedule: str = _f("constant", "learning rate across rounds: constant or cosine")
    warmup_steps: int = _f(0, "linear warmup steps at the start of each local run")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    cutoff_len: int = _f(512, "truncate tokenized examples to this many tokens")
    train_on_inputs: bool = _f(False, "also compute the loss on the prompt tokens")
    autocast: str = _f("auto", "mixed precision: auto (bf16 where supported), bf16, fp16, none")
    group_by_length: bool = _f(True, "batch examples of similar length to cut padding")
    gradient_checkpointing: bool = _f(False, "trade compute for activation memory")

    def validate(self) -> list[str]:
        problems = _check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        problems += _check_choice("train.autocast", self.autocast, AUTOCAST)
        for key in ("batch_size", "micro_batch_size", "cutoff_len"):
            if getattr(self, key) < 1:
                problems.append(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.local_steps is not None and self.local_steps < 1:
            problems.append(f"train.local_steps: must be >= 1, got {self.local_steps}")
        if self.local_epochs <= 0:
            problems.append(f"train.local_epochs: must be > 0, got {self.local_epochs}")
        if self.micro_batch_size >= 1 and self.batch_size % self.micro_batch_size:
            problems.append(
                f"train.batch_size: {self.batch_size} is not a multiple of "
                f"train.micro_batch_size {self.micro_batch_size}"
            )
        if self.lr <= 0:
            problems.append(f"train.lr: must be > 0, got {self.lr}")
        elif self.lr_min < 0 or self.lr_min > self.lr:
            problems.append(f"train.lr_min: must be in [0, train.lr], got {self.lr_min}")
        if self.warmup_steps < 0:
            problems.append(f"train.warmup_steps: must be >= 0, got {self.warmup_steps}")
        return problems


@dataclass
class FederationConfig:
    """Clients, rounds and selection."""

    num_clients: int = _f(100, "number of clients the training data is split across")
    rounds: int = _f(20, "communication rounds")
    fraction_fit: float = _f(0.05, "fraction of clients selected per round")
    min_fit_clients: int = _f(1, "select at least this many clients per round")
    selection: str = _f(
        "random",
        "client selection, seeded per round: random, weighted (by data size), round_robin, "
        "or availability (random, then each client is online with federation.availability)",
    )
    availability: float = _f(
        0.8, "availability selection: probability that a selected client answers in a round"
    )
    upload_compression: str = _f(
        "none", "client uploads: none, fp16, bf16, int8 or int8_channel (lossy ones send deltas)"
    )

    def validate(self) -> list[str]:
        problems = _check_choice("federation.selection", self.selection, SELECTIONS)
        problems += _check_choice(
            "federation.upload_compression", self.upload_compression, COMPRESSIONS
        )
        if not 0 < self.availability <= 1:
            problems.append(f"federation.availability: must be in (0, 1], got {self.availability}")
        if self.num_clients < 1:
            problems.append(f"federation.num_clients: must be >= 1, got {self.num_clients}")
        if self.rounds < 1:
            problems.append(f"federation.rounds: must be >= 1, got {self.rounds}")
        if not 0 < self.fraction_fit <= 1:
            problems.append(f"federation.fraction_fit: must be in (0, 1], got {self.fraction_fit}")
        if self.min_fit_clients < 1 or self.min_fit_clients > max(self.num_clients, 1):
            problems.append(
                f"federation.min_fit_clients: must be in [1, federation.num_clients], "
                f"got {self.min_fit_clients}"
            )
        return problems


@dataclass
class StrategyConfig:
    """Server-side aggregation."""

    name: str = _f("fedavg", "aggregation strategy: " + ", ".join(STRATEGIES))
    proximal_mu: float = _f(0.01, "fedprox: weight mu of the proximal term mu/2 ||w - w_global||^2")
    server_lr: float | None = _f(
        None,
        "server learning rate eta; default 1.0 for fedavgm and scaffold, 0.01 for "
        "fedadam/fedyogi/fedadagrad",
    )
    server_momentum: float = _f(0.9, "fedavgm: server momentum beta (Hsu et al. 2019)")
    beta1: float = _f(0.9, "fedadam/fedyogi/fedadagrad: first-moment decay beta_1")
    beta2: float = _f(0.99, "fedadam/fedyogi: second-moment decay beta_2")
    tau: float = _f(1e-3, "fedadam/fedyogi/fedadagrad: adaptivity tau (Reddi et al. 2021)")

    def validate(self) -> list[str]:
        problems = _check_choice("strategy.name", self.name, STRATEGIES)
        if self.proximal_mu < 0:
            problems.append(f"strategy.proximal_mu: must be >= 0, got {self.proximal_mu}")
        if self.server_lr is not None and self.server_lr <= 0:
            problems.append(f"strategy.server_lr: must be > 0, got {self.server_lr}")
        for key in ("server_momentum", "beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                problems.append(f"strategy.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.tau <= 0:
            problems.append(f"strategy.tau: must be > 0, got {self.tau}")
        return problems


JUDGE_MODES = ("single", "pairwise", "both")


@dataclass
class JudgeConfig:
    """The LLM judge: any OpenAI-compatible chat endpoint (GPT-4, vLLM, ``fedit serve``)."""

    base_url: str | None = _f(
        None, "judge API root, e.g. https://api.openai.com/v1 (none: judge suites are skipped)"
    )
    model: str = _f("gpt-4", "judge model name, as the endpoint knows it")
    api_key_env: str = _f("OPENAI_API_KEY", "environment variable that holds the judge's API key")
    prompts: str | None = _f(
        None, "judge prompt templates: FastChat's judge_prompts.jsonl (single-v1, pair-v2, ...)"
    )
    mode: str = _f("single", "single (1-10 grades), pairwise (both orders) or both")
    repeats: int = _f(1, "times each judgment is asked (mean and spread are reported)")
    concurrency: int = _f(4, "judge requests in flight at once")
    max_retries: int = _f(5, "retries with exponential backoff on 429, 5xx and connection errors")
    timeout: float = _f(120.0, "seconds one judge request may take")
    temperature: float = _f(0.0, "judge sampling temperature")
    max_tokens: int = _f(1024, "judge reply length cap")
    cache: str | None = _f(None, "judgment cache folder (default: $FEDIT_CACHE/judge)")

    def validate(self) -> list[str]:
        problems = _check_choice("eval.judge.mode", self.mode, JUDGE_MODES)
        for key in ("repeats", "concurrency", "max_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"eval.judge.{key}: must be >= 1, got {getattr(self, key)}")
        if self.max_retries < 0:
            problems.append(f"eval.judge.max_retries: must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            problems.append(f"eval.judge.timeout: must be > 0 seconds, got {self.timeout}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            problems.append(
                f"eval.judge.base_url: expected an http:// or https:// URL, got {self.base_url!r}"
            )
        return problems


@dataclass
class EvalConfig:
    """Evaluation of the global adapter on the held-out test set."""

    every: int = _f(1, "evaluate every k rounds (the last round is always evaluated)")
    base: bool = _f(True, "score the base model before round 1")
    generate: bool = _f(True, "greedy generation for exact-match accuracy")
    max_new_tokens: int = _f(32, "generation length cap")
    batch_size: int = _f(16, "evaluation batch size")
    long_max_new_tokens: int = _f(
        256, "generation length cap for open-ended suites (judge questions per turn, gsm8k)"
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> list[str]:
        problems = []
        for key in ("every", "max_new_tokens", "batch_size", "long_max_new_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"eval.{key}: must be >= 1, got {getattr(self, key)}")
        return problems + self.judge.validate()


@dataclass
class CompareConfig:
    """``fedit compare``: base model, Local-k, FedIT and Centralized on the same split."""

    num_local: int = _f(3, "k: clients trained alone on their own data (Local-k)")
    local_clients: list[int] | None = _f(
        None, "which clients to train alone (default: the k that FedIT trained the most)"
    )
    suites: list[str] = _f(
        ["heldout"],
        "suites every model is scored on (see fedit eval --help); judge suites "
        "run only when eval.judge.base_url is set",
    )
    centralized: bool = _f(True, "also train on all clients' data pooled, same total steps")

    def validate(self, num_clients: int) -> list[str]:
        problems = []
        if self.num_local < 0:
            problems.append(f"compare.num_local: must be >= 0, got {self.num_local}")
        for client in self.local_clients or []:
            if not 0 <= client < num_clients:
                problems.append(
                    f"compare.local_clients: client {client} is not in 0..{num_clients - 1}"
                )
        if not self.suites:
            problems.append("compare.suites: name at least one suite, e.g. [heldout]")
        return problems


@dataclass
class FlowerConfig:
    """The Flower engine (engine: flower): where the SuperLink is and how long to wait."""

    superlink: str = _f("127.0.0.1:8000", "SuperLink address (host:port) that flwr run submits to")
    insecure: bool = _f(False, "connect without TLS (warns; for loopback experiments only)")
    root_certificates: str | None = _f(
        None, "CA certificate (PEM) that signed the SuperLink's TLS certificate"
    )
    connect_timeout: float = _f(
        300.0, "seconds the server waits for every client's SuperNode to connect"
    )
    reply_timeout: float = _f(
        600.0, "seconds the server waits for a round's replies before going on without the rest"
    )

    def validate(self) -> list[str]:
        problems = []
        if ":" not in self.superlink:
            problems.append(f"flower.superlink: expected host:port, got {self.superlink!r}")
        if self.insecure and self.root_certificates:
            problems.append("flower.root_certificates: set it or flower.insecure=true, not both")
        if not self.insecure and not self.root_certificates:
            problems.append(
                "flower.root_certificates: TLS needs the CA certificate (PEM); or set "
                "flower.insecure=true to run without TLS on a trusted network"
            )
        for key in ("connect_timeout", "reply_timeout"):
            if getattr(self, key) <= 0:
                problems.append(f"flower.{key}: must be > 0 seconds, got {getattr(self, key)}")
        return problems


@dataclass
class Config:
    """A complete FedIT experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: str = _f("simulation", "simulation (in-process) or flower (SuperLink + SuperNodes)")
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    seed: int = _f(42, "seed for data generation, partitioning, selection and training")
    output_dir: str = _f("runs/quickstart", "run directory")
    resume: bool = _f(False, "continue the run in output_dir from its last complete round")
    overwrite: bool = _f(False, "replace an existing run in output_dir")

    def validate(self) -> list[str]:
        problems: list[str] = []
        for section in (self.model, self.lora, self.data, self.train, self.federation):
            problems += section.validate()
        problems += self.strategy.validate() + self.eval.validate()
        problems += self.compare.validate(self.federation.num_clients)
        problems += _check_choice("engine", self.engine, ENGINES)
        if self.engine == "flower":
            problems += self.flower.validate()
        ranks = {self.lora.r, *(self.lora.client_ranks or [])}
        if len(ranks) > 1 and self.strategy.name != "exact":
            problems.append(
                f"lora.client_ranks: client ranks other than lora.r={self.lora.r} need "
                f"strategy.name=exact; {self.strategy.name} averages A and B element-wise, "
                "which needs one shape"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> list[str]:
    if value not in choices:
        return [f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}"]
    return []


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "lora.target_modules=[q_proj,k_proj]"]`` into a nested dict.

    Values are parsed as YAML scalars or flow lists, so ``true``, ``3``, ``1e-3`` and ``[a,b]``
    get their natural types.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(key: str, value: Any, annotation: Any, problems: list[str]) -> Any:
    """Check ``value`` against a field annotation, converting the harmless cases (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            converted = _coerce(key, value, option, trial)
            if not trial:
                return converted
        problems.append(f"{key}: got {value!r}, expected {_type_name(annotation)}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{key}: got {value!r}, expected a list")
            return value
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [_coerce(key, v, item_type, problems) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: got {value!r}, expected true or false")
        return value
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: got {value!r}, expected an integer")
        return value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(key, float(value), problems)
        if isinstance(value, str):
            try:
                return _finite(key, float(value), problems)
            except ValueError:
                pass
        problems.append(f"{key}: got {value!r}, expected a number")
        return value
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: got {value!r}, expected a string")
        return value
    return value


def _finite(key: str, number: float, problems: list[str]) -> float:
    """nan and inf parse as floats but break training late: refuse them here."""
    if not math.isfinite(number):
        problems.append(f"{key}: got {number!r}, expected a finite number (not nan or inf)")
    return number


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(annotation) else "")


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``raw``; every unknown key and bad type lands in problems."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            suggestion = ", ".join(sorted(known))
            problems.append(f"{dotted}: unknown key; valid keys here are {suggestion}")
            continue
        annotation = hints[key]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                problems.append(f"{dotted}: expected a section (mapping), got {value!r}")
                continue
            kwargs[key] = _build(annotation, value, dotted + ".", problems)
        else:
            kwargs[key] = _coerce(dotted, value, annotation, problems)
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config. Raises ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw = read_yaml(path) if path is not None else {}
    raw = _merge(raw, parse_overrides(overrides or []))
    return config_from_dict(raw)


def save_config(cfg: Config) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key with its default and help, for ``fedit run --help``."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            rows += field_help(annotation, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return rows
