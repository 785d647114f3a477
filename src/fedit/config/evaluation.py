"""Config sections for scoring: held-out evaluation, the LLM judge, ``fedit compare``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedit.config.fields import check_choice, option

JUDGE_MODES = ("single", "pairwise", "both")


@dataclass
class JudgeConfig:
    """The LLM judge: any OpenAI-compatible chat endpoint (GPT-4, vLLM, ``fedit serve``)."""

    base_url: str | None = option(
        None, "judge API root, e.g. https://api.openai.com/v1 (none: judge suites are skipped)"
    )
    model: str = option("gpt-4", "judge model name, as the endpoint knows it")
    api_key_env: str = option(
        "OPENAI_API_KEY", "environment variable that holds the judge's API key"
    )
    prompts: str | None = option(
        None, "judge prompt templates: FastChat's judge_prompts.jsonl (single-v1, pair-v2, ...)"
    )
    mode: str = option("single", "single (1-10 grades), pairwise (both orders) or both")
    repeats: int = option(1, "times each judgment is asked (mean and spread are reported)")
    concurrency: int = option(4, "judge requests in flight at once")
    max_retries: int = option(
        5, "retries with exponential backoff on 429, 5xx and connection errors"
    )
    timeout: float = option(120.0, "seconds one judge request may take")
    temperature: float = option(0.0, "judge sampling temperature")
    max_tokens: int = option(1024, "judge reply length cap")
    cache: str | None = option(None, "judgment cache folder (default: $FEDIT_CACHE/judge)")

    def validate(self) -> list[str]:
        problems = check_choice("eval.judge.mode", self.mode, JUDGE_MODES)
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

    every: int = option(1, "evaluate every k rounds (the last round is always evaluated)")
    base: bool = option(True, "score the base model before round 1")
    generate: bool = option(True, "greedy generation for exact-match accuracy")
    generate_every: int = option(
        1,
        "generate (accuracy) at every k-th evaluated round; 0: only before round 1 and at the "
        "last round (always generated); the loss is computed at every evaluation",
    )
    max_new_tokens: int = option(32, "generation length cap")
    batch_size: int = option(16, "evaluation batch size")
    long_max_new_tokens: int = option(
        256, "generation length cap for open-ended suites (judge questions per turn, gsm8k)"
    )
    target_accuracy: float | None = option(
        None, "report the simulated time to reach this held-out accuracy (docs/systems.md)"
    )
    target_loss: float | None = option(
        None, "report the simulated time to reach this held-out loss or lower (docs/systems.md)"
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> list[str]:
        problems = []
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            problems.append(f"eval.target_accuracy: must be in (0, 1], got {self.target_accuracy}")
        if self.target_loss is not None and self.target_loss <= 0:
            problems.append(f"eval.target_loss: must be > 0, got {self.target_loss}")
        for key in ("every", "max_new_tokens", "batch_size", "long_max_new_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"eval.{key}: must be >= 1, got {getattr(self, key)}")
        if self.generate_every < 0:
            problems.append(f"eval.generate_every: must be >= 0, got {self.generate_every}")
        return problems + self.judge.validate()


COMPARE_ROWS = (
    "finetune",
    "fedsa",
    "ditto",
)  # compare.personalization's rows (evaluation/personal_rows.py)


@dataclass
class CompareConfig:
    """``fedit compare``: base model, Local-k, FedIT and Centralized on the same split."""

    num_local: int = option(3, "k: clients trained alone on their own data (Local-k)")
    local_clients: list[int] | None = option(
        None, "which clients to train alone (default: the k that FedIT trained the most)"
    )
    suites: list[str] = option(
        ["heldout"],
        "suites every model is scored on (see fedit eval --help); judge suites "
        "run only when eval.judge.base_url is set",
    )
    centralized: bool = option(True, "also train on all clients' data pooled, same total steps")
    seeds: list[int] | None = option(
        None,
        "repeat the whole study per seed (split, partition, LoRA init, selection, training) "
        "and report means with 95% intervals, e.g. [42, 43, 44] (default: just `seed`)",
    )
    personalization: list[str] = option(
        [],
        "personalized rows scored on each client's own test share (data.client_test_fraction): "
        "finetune (FedIT's global adapter fine-tuned on each client's data), fedsa (a "
        "FedSA-LoRA run's (A, own B) adapters), ditto (a Ditto run's personal adapters)",
    )

    def validate(self, num_clients: int) -> list[str]:
        problems = []
        if self.seeds is not None:
            if not self.seeds:
                problems.append("compare.seeds: name at least one seed, or leave it unset")
            elif len(set(self.seeds)) != len(self.seeds):
                problems.append(f"compare.seeds: seeds repeat in {self.seeds}")
        if self.num_local < 0:
            problems.append(f"compare.num_local: must be >= 0, got {self.num_local}")
        for client in self.local_clients or []:
            if not 0 <= client < num_clients:
                problems.append(
                    f"compare.local_clients: client {client} is not in 0..{num_clients - 1}"
                )
        if not self.suites:
            problems.append("compare.suites: name at least one suite, e.g. [heldout]")
        for name in self.personalization:
            if name not in COMPARE_ROWS:
                problems.append(
                    f"compare.personalization: unknown row {name!r}; choose from "
                    + ", ".join(COMPARE_ROWS)
                )
        return problems
