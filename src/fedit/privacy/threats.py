"""Against whom a run's ε holds: the threat model, one statement for the docs, plan and ε line.

Privacy is a claim about an adversary. For each party that could look (the server, another
client, an eavesdropper on the wire, and the public: whoever later gets the published adapter,
checkpoints or metrics.jsonl) and each way of running (``privacy.level`` and, at client level,
``privacy.noise_at``), ``threat_model`` says what that party learns and which guarantee holds
against it. ``docs/privacy.md``'s table is ``threat_table_markdown()`` (a test keeps them
equal), a run's ``privacy.json`` carries its own column, and the end-of-run line is built from
the same cells (``guarantee_clause``).

Secure aggregation, which would make the server see only the noised sum, is not built yet:
until then ``noise_at: clients`` protects against the server only through each client's own
share of the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTIES = {
    "server": "the server",
    "client": "another client",
    "eavesdropper": "an eavesdropper",
    "public": "the public",
}

# (privacy.level, privacy.noise_at) of each column of the table, and its heading.
COLUMNS = {
    ("none", "server"): "`none`",
    ("client", "server"): "`client`, `noise_at: server`",
    ("client", "clients"): "`client`, `noise_at: clients`",
    ("example", "server"): "`example`",
}

NO_GUARANTEE = "no guarantee"
EPSILON = "ε as reported"
UPLOAD_EPSILON = (
    "only ε₁ per upload (z/(2√D), replace-one, no amplification), composed over its rounds"
)
TLS_ONLY = "with TLS, who takes part and message sizes (the same for every client under DP)"


@dataclass(frozen=True)
class Exposure:
    """What one party learns, and the guarantee that holds against it."""

    learns: str
    guarantee: str

    @property
    def holds(self) -> bool:
        """Whether the run's reported ε holds against this party."""
        return self.guarantee == EPSILON

    def cell(self) -> str:
        return f"{self.learns}: **{self.guarantee}**"


def _none() -> dict[str, Exposure]:
    return {
        "server": Exposure("every client's update, in the clear", NO_GUARANTEE),
        "client": Exposure("the global adapters it is sent", NO_GUARANTEE),
        "eavesdropper": Exposure(f"{TLS_ONLY}; without TLS, every update", NO_GUARANTEE),
        "public": Exposure("the global adapter, checkpoints and metrics.jsonl", NO_GUARANTEE),
    }


def _client_level(noise_at: str) -> dict[str, Exposure]:
    published = Exposure(
        "the noised global adapters, checkpoints and metrics.jsonl (no per-client field, "
        "no selection)",
        EPSILON,
    )
    others = Exposure("the noised global adapters it is sent", EPSILON)
    if noise_at == "server":
        return {
            "server": Exposure(
                "every client's clipped update in the clear, and who took part", NO_GUARANTEE
            ),
            "client": others,
            "eavesdropper": Exposure(
                f"{TLS_ONLY}; without TLS, the clipped updates",
                "with TLS, nothing of the data; without, no guarantee",
            ),
            "public": published,
        }
    return {
        "server": Exposure(
            "each client's clipped update plus its noise share N(0, z²C²/D), and who took part",
            UPLOAD_EPSILON,
        ),
        "client": others,
        "eavesdropper": Exposure(
            f"{TLS_ONLY}; without TLS, what the server sees",
            "with TLS, nothing of the data; without, as the server",
        ),
        "public": published,
    }


def _example_level() -> dict[str, Exposure]:
    return {
        "server": Exposure(
            "each client's DP-SGD update (its batches and noise drawn at the client), who took "
            "part, and each client's number of examples",
            EPSILON,
        ),
        "client": Exposure("the global adapters it is sent", EPSILON),
        "eavesdropper": Exposure(f"{TLS_ONLY}; without TLS, each DP-SGD update", EPSILON),
        "public": Exposure("the global adapter, checkpoints and metrics.jsonl", EPSILON),
    }


def threat_model(level: str, noise_at: str = "server") -> dict[str, Exposure]:
    """Party (a key of ``PARTIES``) → what it learns and the guarantee against it."""
    if level == "client":
        return _client_level(noise_at)
    if level == "example":
        return _example_level()
    return _none()


def threat_table_markdown() -> str:
    """The table ``docs/privacy.md`` opens with: a row per party, a column per way of running."""
    header = "| who | " + " | ".join(COLUMNS.values()) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    models = [threat_model(level, noise_at) for level, noise_at in COLUMNS]
    for party, name in PARTIES.items():
        lines.append(f"| {name} | " + " | ".join(m[party].cell() for m in models) + " |")
    return "\n".join(lines)


def guarantee_clause(level: str, noise_at: str, upload_epsilon: float | None = None) -> str:
    """The end of the ε line: who the ε holds against, and who it does not.

    e.g. ``against: another client and the public; not against the server (noise added at
    the server)``.
    """
    model = threat_model(level, noise_at)
    holds = [PARTIES[p] for p in ("server", "client", "public") if model[p].holds]
    clause = "against: " + (
        holds[-1] if len(holds) == 1 else f"{', '.join(holds[:-1])} and {holds[-1]}"
    )
    if level == "client" and noise_at == "server":
        return clause + "; not against the server (noise added at the server)"
    if level == "client":
        per_upload = "" if upload_epsilon is None else f" = {upload_epsilon:.3g}"
        return (
            clause + f"; the server only ε₁{per_upload} per upload (each upload carries "
            "1/√D of the noise; secure aggregation is not in use)"
        )
    return clause
