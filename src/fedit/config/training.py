"""Config sections for what a client trains: model, LoRA, data, local training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedit.config.fields import check_choice, option

DTYPES = ("fp32", "bf16", "fp16", "auto")
DEVICES = ("cpu", "cuda", "auto")
QUANTIZATIONS = ("none", "4bit", "8bit")
TEMPLATES = ("alpaca", "chat")
PARTITION_METHODS = ("iid", "dirichlet", "shards", "natural")
LR_SCHEDULES = ("constant", "cosine")
LOCAL_LR_SCHEDULES = ("constant", "linear", "cosine")
AUTOCAST = ("auto", "bf16", "fp16", "none")
KERNELS = ("auto", "liger", "none")
OBJECTIVES = ("sft", "dpo")
DPO_REFERENCES = ("base", "global")
DPO_LOSSES = ("sigmoid", "ipo")


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    name: str = option(
        "smollm2-135m-instruct",
        "Hugging Face hub id, local folder, or an embedded name (smollm2-135m-instruct)",
    )
    dtype: str = option(
        "fp32",
        "weight dtype of the frozen base: fp32, bf16, fp16, or auto (bf16 where the CPU or GPU "
        "has native bf16, else fp32); LoRA parameters and optimizer state stay fp32",
    )
    device: str = option("auto", "cpu, cuda or auto (cuda when available)")
    quantization: str = option("none", "none, 4bit or 8bit (bitsandbytes; CPU or CUDA)")
    revision: str | None = option(None, "hub revision (branch, tag or commit)")
    trust_remote_code: bool = option(False, "allow model code from the hub")
    adapter: str | None = option(
        None,
        "PEFT adapter folder to start from (e.g. runs/quickstart/global_adapter); "
        "its rank, alpha and target modules must match lora.*",
    )

    def validate(self) -> list[str]:
        problems = check_choice("model.dtype", self.dtype, DTYPES)
        problems += check_choice("model.device", self.device, DEVICES)
        problems += check_choice("model.quantization", self.quantization, QUANTIZATIONS)
        if not self.name:
            problems.append("model.name: must not be empty")
        return problems


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft). Defaults follow Shepherd."""

    r: int = option(16, "LoRA rank")
    alpha: int = option(16, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = option(0.05, "dropout on the LoRA input")
    target_modules: str | list[str] = option(
        ["q_proj", "v_proj"], "module names to adapt, or 'all-linear'"
    )
    client_ranks: list[int] | None = option(
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

    instruction: str | None = option(None, "column holding the instruction")
    input: str | None = option(None, "column holding the optional input/context")
    output: str | None = option(None, "column holding the reference response")
    category: str | None = option(None, "column holding the task category")


@dataclass
class PartitionConfig:
    """How the training examples are split across clients."""

    method: str = option("shards", "iid, dirichlet, shards (Shepherd) or natural")
    by: str = option("category", "label column for dirichlet, shards and natural")
    alpha: float = option(0.5, "Dirichlet concentration; smaller is more skewed")
    min_per_client: int = option(1, "dirichlet: resample until every client has this many examples")
    shards_per_client: int = option(2, "shards: shards each client receives (Shepherd uses 2)")

    def validate(self) -> list[str]:
        problems = check_choice("data.partition.method", self.method, PARTITION_METHODS)
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

    num_examples: int = option(2000, "examples to generate (spread evenly over the categories)")
    categories: list[str] | None = option(None, "subset of categories to use (default: all)")

    def validate(self) -> list[str]:
        if self.num_examples < 1:
            return [f"data.synthetic.num_examples: must be >= 1, got {self.num_examples}"]
        return []


@dataclass
class DataConfig:
    """Where the instructions come from and how they are turned into training tokens."""

    source: str = option(
        "synthetic", "synthetic, a hub dataset id, or a .json/.jsonl/.csv/.parquet file or folder"
    )
    split: str = option("train", "split to read from a hub dataset")
    subset: str | None = option(None, "hub dataset configuration name")
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    template: str = option("alpaca", "prompt template: alpaca (Shepherd) or chat (tokenizer's own)")
    test_per_category: int = option(
        10, "held-out test examples per category, taken before partitioning"
    )
    test_source: str | None = option(
        None, "separate test file or hub dataset (instead of holding out)"
    )
    max_examples: int | None = option(None, "use only the first N examples after shuffling")
    client_test_fraction: float = option(
        0.0,
        "share of each client's examples kept out of training as its own test set, so "
        "fedit compare scores every model per client (0: none)",
    )
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> list[str]:
        problems = check_choice("data.template", self.template, TEMPLATES)
        if self.test_per_category < 0:
            problems.append(f"data.test_per_category: must be >= 0, got {self.test_per_category}")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"data.max_examples: must be >= 1, got {self.max_examples}")
        if not 0 <= self.client_test_fraction < 1:
            problems.append(
                f"data.client_test_fraction: must be in [0, 1), got {self.client_test_fraction}"
            )
        return problems + self.partition.validate() + self.synthetic.validate()


@dataclass
class TrainConfig:
    """Local training on each client."""

    local_steps: int | None = option(
        None, "optimizer steps per client per round (overrides epochs)"
    )
    local_epochs: float = option(
        1.0, "passes over the client's data per round, if local_steps unset"
    )
    batch_size: int = option(8, "examples per optimizer step")
    micro_batch_size: int = option(
        8, "examples per forward pass; batch_size / this = grad accumulation"
    )
    lr: float = option(3e-4, "peak learning rate (AdamW)")
    lr_min: float = option(0.0, "final learning rate of the cosine schedule across rounds")
    lr_schedule: str = option("constant", "learning rate across rounds: constant or cosine")
    local_lr_schedule: str = option(
        "constant",
        "learning rate within each client's local run, after warmup: constant, linear or cosine "
        "(decaying from the round's lr towards 0, as the HF Trainer does)",
    )
    warmup_steps: int = option(0, "linear warmup steps at the start of each local run")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    cutoff_len: int = option(512, "truncate tokenized examples to this many tokens")
    train_on_inputs: bool = option(False, "also compute the loss on the prompt tokens")
    autocast: str = option("auto", "mixed precision: auto (bf16 where supported), bf16, fp16, none")
    group_by_length: bool = option(
        False,
        "batch examples of similar length to cut padding (about 1.2x faster on a CPU); off by "
        "default: where length tracks the task, batches become single-task, which cost held-out "
        "loss on the quickstart over 3 seeds (docs/benchmarks.md, training recipe)",
    )
    packing: bool = option(
        False,
        "pack each micro-batch's examples into rows of up to cutoff_len tokens, attention kept "
        "inside each example (same loss as unpacked, less padding; sft only)",
    )
    gradient_checkpointing: bool = option(False, "trade compute for activation memory")
    compile: bool | str = option(
        False,
        "torch.compile the training forward: true, false, or auto (on a CUDA GPU only); "
        "falls back to eager, with one log line, if compilation fails",
    )
    kernels: str = option(
        "auto",
        "fused kernels for Llama-family models on CUDA: liger (liger-kernel's RMSNorm, RoPE and "
        "SwiGLU; pip install 'fedit[kernels]'), none, or auto (liger where CUDA and "
        "liger-kernel are both present, else none)",
    )
    objective: str = option(
        "sft", "sft (instruction tuning) or dpo (preference pairs; see the dpo section)"
    )

    def validate(self) -> list[str]:
        problems = check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        problems += check_choice(
            "train.local_lr_schedule", self.local_lr_schedule, LOCAL_LR_SCHEDULES
        )
        problems += check_choice("train.objective", self.objective, OBJECTIVES)
        problems += check_choice("train.autocast", self.autocast, AUTOCAST)
        problems += check_choice("train.kernels", self.kernels, KERNELS)
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
        if isinstance(self.compile, str) and self.compile != "auto":
            problems.append(f"train.compile: got {self.compile!r}; use true, false or auto")
        if self.warmup_steps < 0:
            problems.append(f"train.warmup_steps: must be >= 0, got {self.warmup_steps}")
        return problems


@dataclass
class DPOConfig:
    """Direct preference optimisation (``train.objective=dpo``), Rafailov et al. 2023."""

    beta: float = option(0.1, "strength of the KL anchor to the reference (DPO's beta)")
    reference: str = option(
        "base",
        "reference model: base (adapter disabled, as TRL with peft) or global (the round's "
        "global adapter, frozen)",
    )
    loss: str = option("sigmoid", "sigmoid (DPO) or ipo (Azar et al. 2023, length-normalised)")

    def validate(self) -> list[str]:
        problems = check_choice("dpo.reference", self.reference, DPO_REFERENCES)
        problems += check_choice("dpo.loss", self.loss, DPO_LOSSES)
        if not self.beta > 0:
            problems.append(f"dpo.beta: must be > 0, got {self.beta}")
        return problems
