"""Config sections for the federation: clients and rounds, the strategy, the Flower engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedit.config.fields import check_choice, option
from fedit.config.selection import OortConfig
from fedit.config.system import SystemConfig

SELECTIONS = (
    "random",
    "weighted",
    "round_robin",
    "availability",
    "poisson",
    "oort",
    "fastest",
    "diverse",
)
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
    "fedbuff",
)
# Upload compression (fedit.communication implements them).
COMPRESSIONS = ("none", "fp16", "bf16", "int8", "int8_channel")


@dataclass
class FederationConfig:
    """Clients, rounds and selection."""

    num_clients: int = option(100, "number of clients the training data is split across")
    rounds: int = option(20, "communication rounds")
    fraction_fit: float = option(0.05, "fraction of clients selected per round")
    min_fit_clients: int = option(1, "select at least this many clients per round")
    selection: str = option(
        "random",
        "client selection, seeded per round: random, weighted (by data size), round_robin, "
        "availability (random, then each client is online with federation.availability), "
        "poisson (each client independently with federation.sample_rate), oort (Lai et al. "
        "2021: loss, size and speed; federation.oort), fastest (shortest expected time; needs "
        "federation.system) or diverse (most categories covered; docs/systems.md)",
    )
    sample_rate: float = option(
        0.1, "poisson selection: probability that each client trains in a round"
    )
    availability: float = option(
        0.8, "availability selection: probability that a selected client answers in a round"
    )
    upload_compression: str = option(
        "none", "client uploads: none, fp16, bf16, int8 or int8_channel (lossy ones send deltas)"
    )
    system: SystemConfig = field(default_factory=SystemConfig)
    oort: OortConfig = field(default_factory=OortConfig)
    deadline: float | None = option(
        None,
        "simulated seconds a round waits for its clients; slower ones are dropped and their "
        "work counted as wasted (needs federation.system; with profiles=measured on "
        "engine=flower, wall-clock seconds that replace flower.reply_timeout; docs/systems.md)",
    )
    over_select: float = option(
        1.0,
        "with federation.deadline: select ceil(m * over_select) of the online clients, m the "
        "round's usual number, so that enough beat the deadline (e.g. 1.3)",
    )
    concurrency: int | None = option(
        None,
        "strategy.name=fedbuff: clients training at once on the simulated clock (default: "
        "the clients a synchronous round selects)",
    )

    def validate(self) -> list[str]:
        problems = check_choice("federation.selection", self.selection, SELECTIONS)
        problems += self.system.validate() + self._deadline_problems() + self.oort.validate()
        if self.selection == "fastest" and not self.system.enabled:
            problems.append(
                "federation.selection=fastest: picks by the simulated clock's expected times; "
                "set federation.system.profiles=sampled, csv or measured (docs/systems.md)"
            )
        problems += check_choice(
            "federation.upload_compression", self.upload_compression, COMPRESSIONS
        )
        if not 0 < self.availability <= 1:
            problems.append(f"federation.availability: must be in (0, 1], got {self.availability}")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"federation.sample_rate: must be in (0, 1], got {self.sample_rate}")
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

    def _deadline_problems(self) -> list[str]:
        problems = []
        if self.deadline is not None and self.deadline <= 0:
            problems.append(f"federation.deadline: must be > 0 seconds, got {self.deadline}")
        if self.deadline is not None and not self.system.enabled:
            problems.append(
                "federation.deadline: the clock decides who misses it; set "
                "federation.system.profiles=sampled, csv or measured (docs/systems.md)"
            )
        if self.over_select < 1:
            problems.append(f"federation.over_select: must be >= 1, got {self.over_select}")
        if self.over_select != 1 and self.deadline is None:
            problems.append(
                "federation.over_select: over-selection makes up for clients that miss "
                "federation.deadline; set a deadline, or leave over_select at 1"
            )
        return problems


@dataclass
class StrategyConfig:
    """Server-side aggregation."""

    name: str = option("fedavg", "aggregation strategy: " + ", ".join(STRATEGIES))
    proximal_mu: float = option(
        0.01, "fedprox: weight mu of the proximal term mu/2 ||w - w_global||^2"
    )
    server_lr: float | None = option(
        None,
        "server learning rate eta; default 1.0 for fedavgm, scaffold and fedbuff, 0.01 for "
        "fedadam/fedyogi/fedadagrad",
    )
    server_momentum: float = option(0.9, "fedavgm: server momentum beta (Hsu et al. 2019)")
    beta1: float = option(0.9, "fedadam/fedyogi/fedadagrad: first-moment decay beta_1")
    beta2: float = option(0.99, "fedadam/fedyogi: second-moment decay beta_2")
    tau: float = option(1e-3, "fedadam/fedyogi/fedadagrad: adaptivity tau (Reddi et al. 2021)")
    buffer_size: int | None = option(
        None,
        "fedbuff: updates per aggregation, K (default: federation.concurrency)",
    )
    staleness: str = option(
        "sqrt",
        "fedbuff: weight of an update tau global versions old: sqrt (1/sqrt(1+tau), Nguyen et "
        "al. 2022), inverse (1/(1+tau)) or constant (1)",
    )

    def validate(self) -> list[str]:
        problems = check_choice("strategy.name", self.name, STRATEGIES)
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


@dataclass
class FlowerSimulationConfig:
    """Flower's simulation runtime (engine: flower-simulation): virtual SuperNodes on Ray."""

    num_supernodes: int | None = option(
        None, "virtual SuperNodes, one per client (default: federation.num_clients)"
    )
    client_cpus: float = option(1.0, "CPUs each virtual client reserves on Ray")
    client_gpus: float = option(
        0.0, "GPUs each virtual client reserves: 0.25 puts 4 clients on one GPU, 1 one per GPU"
    )
    num_cpus: int | None = option(
        None, "CPUs Ray may use (default: all); parallel clients = num_cpus // client_cpus"
    )
    num_gpus: int | None = option(None, "GPUs Ray may use (default: every visible GPU)")

    def validate(self, num_clients: int) -> list[str]:
        problems = []
        if self.num_supernodes is not None and self.num_supernodes != num_clients:
            problems.append(
                f"flower.simulation.num_supernodes: {self.num_supernodes} differs from "
                f"federation.num_clients={num_clients}; each virtual SuperNode holds one "
                "client's partition, so leave it unset or equal"
            )
        if self.client_cpus <= 0:
            problems.append(f"flower.simulation.client_cpus: must be > 0, got {self.client_cpus}")
        if self.client_gpus < 0:
            problems.append(f"flower.simulation.client_gpus: must be >= 0, got {self.client_gpus}")
        if 0 < self.client_gpus < 1 and not (1 / self.client_gpus).is_integer():
            problems.append(
                f"flower.simulation.client_gpus: {self.client_gpus} does not divide a GPU; "
                "use 1/k (0.5, 0.25, ...) or a whole number"
            )
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if value is not None and value < (1 if key == "num_cpus" else 0):
                problems.append(f"flower.simulation.{key}: got {value}")
        if self.num_cpus is not None and self.client_cpus > self.num_cpus:
            problems.append(
                f"flower.simulation.client_cpus: {self.client_cpus} is more than "
                f"flower.simulation.num_cpus={self.num_cpus}; no client could start"
            )
        return problems


@dataclass
class FlowerConfig:
    """The Flower engines: where the SuperLink is and how long to wait (engine: flower), and
    the simulation runtime's resources (engine: flower-simulation)."""

    superlink: str = option(
        "127.0.0.1:8000", "SuperLink address (host:port) that flwr run submits to"
    )
    insecure: bool = option(False, "connect without TLS (warns; for loopback experiments only)")
    root_certificates: str | None = option(
        None, "CA certificate (PEM) that signed the SuperLink's TLS certificate"
    )
    connect_timeout: float = option(
        300.0, "seconds the server waits for every client's SuperNode to connect"
    )
    reply_timeout: float = option(
        600.0, "seconds the server waits for a round's replies before going on without the rest"
    )
    rejoin_timeout: float = option(
        120.0,
        "seconds a round keeps waiting for a client whose node left the SuperLink, in case the "
        "site restarts and rejoins (at most flower.reply_timeout; 0: go on without it at once)",
    )
    simulation: FlowerSimulationConfig = field(default_factory=FlowerSimulationConfig)

    def validate(self) -> list[str]:
        """The deployment engine's checks (TLS, addresses, timeouts)."""
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
        if self.rejoin_timeout < 0:
            problems.append(
                f"flower.rejoin_timeout: must be >= 0 seconds, got {self.rejoin_timeout}"
            )
        return problems
