"""Against whom a run's ε holds: the threat model, one statement for the docs, plan and ε line.

Privacy is a claim about an adversary. For each party that could look (the server, another
client, an eavesdropper on the wire, the public: whoever later gets the published adapter,
checkpoints or metrics.jsonl, and whoever gets a client's own model under
``personalization.method``) and each way of running (``privacy.level``, at client level
``privacy.noise_at``, and ``privacy.secure_aggregation``), ``threat_model`` says what that party
learns and which guarantee holds against it. ``docs/privacy.md``'s table is
``threat_table_markdown()`` (a test keeps them equal), a run's ``privacy.json`` carries its own
column, and the end-of-run line is built from the same cells (``guarantee_clause``).

Secure aggregation (SecAgg+ on the Flower engines) shows the server only the sum of the
updates. With ``noise_at: clients`` that sum carries the whole noise (distributed DP), so ε
holds against an honest-but-curious server, provided fewer than
``privacy.secagg.reconstruction_threshold`` clients collude with it: that many could help it
unmask one client's upload, which alone carries only ε₁. Without secure aggregation
``noise_at: clients`` protects against the server only through each client's own noise share.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTIES = {
    "server": "the server",
    "client": "another client",
    "eavesdropper": "an eavesdropper",
    "public": "the public",
    "personal": "whoever gets a client's own model",
}
# personalization.method: a client's own model is trained on its raw data and never sent, so
# no ε covers it; only example-level DP trains it inside the accountant's steps (fedsa's B).
PERSONAL_WHERE = (
    "with `personalization.method`, the client's own model (`personal/client-<id>/` and "
    "`clients/<id>/` at the site, or in the run folder in simulation; `fedit serve --run`'s "
    "`client-<id>`; `fedit export --client`)"
)


# (privacy.level, privacy.noise_at, privacy.secure_aggregation) of each column of the table,
# and its heading.
COLUMNS = {
    ("none", "server", False): "`none`",
    ("client", "server", False): "`client`, `noise_at: server`",
    ("client", "clients", False): "`client`, `noise_at: clients`",
    ("example", "server", False): "`example`",
    ("none", "server", True): "`none` + SecAgg",
    ("client", "clients", True): "`client`, `noise_at: clients` + SecAgg",
}

NO_GUARANTEE = "no guarantee"
EPSILON = "ε as reported"
UPLOAD_EPSILON = (
    "only ε₁ per upload (z/(2√D), replace-one, no amplification), composed over its rounds"
)
TLS_ONLY = "with TLS, who takes part and message sizes (the same for every client under DP)"
THRESHOLD = "`privacy.secagg.reconstruction_threshold`"
COLLUSION = f"provided fewer than {THRESHOLD} clients collude with it (honest-but-curious server)"


@dataclass(frozen=True)
class Exposure:
    """What one party learns, and the guarantee that holds against it."""

    learns: str
    guarantee: str

    @property
    def holds(self) -> bool:
        """Whether the run's reported ε holds against this party (perhaps with a proviso)."""
        return self.guarantee.startswith(EPSILON)

    def cell(self) -> str:
        return f"{self.learns}: **{self.guarantee}**"


def _personal(level: str) -> Exposure:
    if level == "example":
        return Exposure(
            PERSONAL_WHERE,
            f"{EPSILON} for fedsa's B, an iterate of the accounted DP-SGD run; finetune and "
            "ditto are refused at this level",
        )
    return Exposure(PERSONAL_WHERE, f"{NO_GUARANTEE}: trained on the raw data, outside ε")


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


def _secure(level: str, noise_at: str, clear: dict[str, Exposure]) -> dict[str, Exposure]:
    """``clear``'s exposures once secure aggregation shows the server only the sum.

    The server still knows whom it instructed and who answered, and a site's number of
    examples (sent when it registers); an active server, or anyone on the path without TLS,
    could substitute the public keys it relays, which nothing authenticates.
    """
    registered = "who answered, and each client's number of examples (sent when it registers)"
    hidden = f"{NO_GUARANTEE}; no update alone, {COLLUSION}"
    if level == "example":
        server = Exposure(f"the sum of the clients' DP-SGD updates, {registered}", EPSILON)
    elif level == "client" and noise_at == "clients":
        server = Exposure(
            "the sum of the answering clients' clipped updates and their noise shares (r "
            "replies carry N(0, z²C²·r/D)), and who answered",
            f"{EPSILON}, {COLLUSION}, when every client trains and answers every round (it "
            "knows who answered: sampling gives it no amplification, and a round of r < D "
            "replies shows it only r/D of the noise variance)",
        )
    elif level == "client":
        server = Exposure(
            "the noise-free sum of the clients' clipped updates, and who answered", hidden
        )
    else:
        server = Exposure(
            f"the sum of the clients' updates weighted by their examples, {registered}", hidden
        )
    keys = (
        "; its neighbours' public keys and one share of each one's mask secrets (fewer than "
        f"{THRESHOLD} reveal nothing)"
    )
    client = clear["client"]
    active = "an active one can substitute the relayed public keys and read every update"
    eavesdropper = Exposure(
        f"{TLS_ONLY}; without TLS, what the server sees, and {active}",
        EPSILON if level == "example" else "with TLS, nothing of the data; without, no guarantee",
    )
    if level == "none":
        eavesdropper = Exposure(eavesdropper.learns, NO_GUARANTEE)
    return {
        "server": server,
        "client": Exposure(client.learns + keys, client.guarantee),
        "eavesdropper": eavesdropper,
        "public": clear["public"],
    }


def threat_model(
    level: str, noise_at: str = "server", secure_aggregation: bool = False
) -> dict[str, Exposure]:
    """Party (a key of ``PARTIES``) → what it learns and the guarantee against it."""
    if level == "client":
        model = _client_level(noise_at)
    elif level == "example":
        model = _example_level()
    else:
        model = _none()
    model = _secure(level, noise_at, model) if secure_aggregation else model
    return {**model, "personal": _personal(level)}


def threat_table_markdown() -> str:
    """The table ``docs/privacy.md`` opens with: a row per party, a column per way of running."""
    header = "| who | " + " | ".join(COLUMNS.values()) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    models = [threat_model(*column) for column in COLUMNS]
    for party, name in PARTIES.items():
        lines.append(f"| {name} | " + " | ".join(m[party].cell() for m in models) + " |")
    return "\n".join(lines)


def guarantee_clause(
    level: str,
    noise_at: str,
    upload_epsilon: float | None = None,
    secure_aggregation: bool = False,
    personalization: str = "none",
) -> str:
    """The end of the ε line: who the ε holds against, and who it does not.

    e.g. ``against: another client and the public; not against the server (noise added at
    the server)``. With secure aggregation and ``noise_at: clients`` (distributed DP) the
    server is named, with the proviso that fewer than t clients collude with it.
    """
    model = threat_model(level, noise_at, secure_aggregation)
    holds = [PARTIES[p] for p in ("server", "client", "public") if model[p].holds]
    clause = "against: " + (
        holds[-1] if len(holds) == 1 else f"{', '.join(holds[:-1])} and {holds[-1]}"
    )
    if personalization != "none" and not (level == "example" and personalization == "fedsa"):
        clause += "; not a client's own model (never sent, trained outside ε)"
    if level != "client":
        return clause
    if noise_at == "server":
        seen = "; secure aggregation hides each update, not the noise-free sum"
        why = "noise added at the server" + (seen if secure_aggregation else "")
        return clause + f"; not against the server ({why})"
    per_upload = "" if upload_epsilon is None else f" = {upload_epsilon:.3g}"
    if secure_aggregation:
        return (
            clause + "; the server only while fewer than privacy.secagg.reconstruction_threshold "
            f"clients collude with it (secure aggregation, honest-but-curious server; else ε₁"
            f"{per_upload} per upload they unmask) and every client trains and answers every "
            "round (it knows who answered)"
        )
    return (
        clause + f"; the server only ε₁{per_upload} per upload (each upload carries "
        "1/√D of the noise; secure aggregation is not in use)"
    )
