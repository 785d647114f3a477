"""The threat model: docs/privacy.md's table is the code's, and a plan states its own column."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from fedit.config import load_config
from fedit.privacy.plan import PLAN_FILE, PrivacyPlan, epsilon_line
from fedit.privacy.threats import (
    COLUMNS,
    EPSILON,
    NO_GUARANTEE,
    guarantee_clause,
    threat_model,
    threat_table_markdown,
)
from fedit.reporting.privacy_report import final_epsilon_line
from fedit.server.privacy_budget import make_plan, resumed_plan

DOCS = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"
# Distributed DP: client-level noise shares summed under SecAgg+ (Flower engines only).
DISTRIBUTED = [
    "engine=flower-simulation",
    "privacy.secure_aggregation=true",
    "privacy.level=client",
    "privacy.noise_at=clients",
    "privacy.noise_multiplier=1.0",
    "federation.num_clients=8",
    "federation.fraction_fit=0.5",
]
PROVISO = "fewer than `privacy.secagg.reconstruction_threshold` clients collude with it"


def test_docs_table_is_the_code_table():
    assert threat_table_markdown() in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("overrides", "against_server", "public"),
    [
        (["privacy.level=client", "privacy.noise_at=server"], NO_GUARANTEE, EPSILON),
        (["privacy.level=client", "privacy.noise_at=clients"], "only ε₁ per upload", EPSILON),
        (["privacy.level=example"], EPSILON, EPSILON),
    ],
    ids=["client-server", "client-clients", "example"],
)
def test_plan_states_its_column(overrides, against_server, public):
    cfg = load_config(None, [*overrides, "privacy.noise_multiplier=1.0"])
    plan = make_plan(cfg, [20] * cfg.federation.num_clients)
    level, noise_at = cfg.privacy.level, cfg.privacy.noise_at
    expected = {p: e.__dict__ for p, e in threat_model(level, noise_at).items()}
    assert not plan.secure_aggregation
    assert plan.threat_model == expected
    assert plan.threat_model["server"]["guarantee"].startswith(against_server)
    assert plan.threat_model["public"]["guarantee"] == public
    assert (plan.upload_epsilon is not None) == (noise_at == "clients" and level == "client")


def test_upload_epsilon_is_that_of_one_share_under_replace_one():
    # 10 clients per round, z = 1: one upload carries N(0, C²/10), sensitivity 2C, so its
    # multiplier is 1/(2√10) = 0.158; dp-accounting's RDP gives ε far above any useful value.
    cfg = load_config(
        None,
        [
            "privacy.level=client",
            "privacy.noise_at=clients",
            "privacy.noise_multiplier=1.0",
            "federation.num_clients=100",
            "federation.fraction_fit=0.1",
        ],
    )
    plan = make_plan(cfg, [20] * 100)
    accountant = RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(1.0 / (2 * 10**0.5)))
    assert plan.upload_epsilon == pytest.approx(accountant.get_epsilon(plan.delta), rel=1e-9)
    assert plan.upload_epsilon > 40  # ≈ 49: no protection worth the name
    line = epsilon_line(
        {
            "epsilon": 1.0,
            "delta": plan.delta,
            "level": "client",
            "accountant": "rdp",
            "relation": "replace_one",
            "noise_at": "clients",
            "upload_epsilon": plan.upload_epsilon,
        }
    )
    assert "(client-level, replace-one, RDP) against: another client and the public" in line
    assert f"the server only ε₁ = {plan.upload_epsilon:.3g} per upload" in line


def test_default_delta_is_at_most_1e_5_and_below_one_over_n():
    for clients in (4, 100, 10**4):
        cfg = load_config(None, ["privacy.level=client", "privacy.noise_multiplier=1.0"])
        plan = make_plan(cfg, [20] * clients)
        assert plan.delta <= 1e-5 and plan.delta < 1 / clients


def test_distributed_dp_holds_against_the_server_unless_t_clients_collude():
    plan = make_plan(load_config(None, DISTRIBUTED), [20] * 8)
    assert plan.secure_aggregation
    server = plan.threat_model["server"]
    assert server == threat_model("client", "clients", secure_aggregation=True)["server"].__dict__
    assert server["guarantee"].startswith(f"{EPSILON}, provided {PROVISO}")
    assert "sum" in server["learns"] and "who answered" in server["learns"]
    # Without secure aggregation the same plan gives the server only ε₁ per upload.
    assert threat_model("client", "clients")["server"].guarantee.startswith("only ε₁")
    # ε₁ is still computed: what one upload shows a server that t colluders help unmask.
    assert plan.upload_epsilon is not None and plan.upload_epsilon > 0


def test_secagg_without_dp_hides_each_update_but_gives_no_epsilon():
    server = threat_model("none", "server", secure_aggregation=True)["server"]
    assert server.guarantee.startswith(NO_GUARANTEE) and PROVISO in server.guarantee
    assert "sum of the clients' updates" in server.learns
    # Keys are relayed unauthenticated: without TLS an active attacker reads every update.
    eavesdropper = threat_model("client", "clients", secure_aggregation=True)["eavesdropper"]
    assert "substitute the relayed public keys" in eavesdropper.learns
    assert eavesdropper.guarantee.endswith("without, no guarantee")


def test_epsilon_line_of_distributed_dp_names_the_server():
    record = {
        "epsilon": 2.0,
        "delta": 1e-5,
        "level": "client",
        "accountant": "rdp",
        "relation": "add_or_remove_one",
        "noise_at": "clients",
        "upload_epsilon": 48.8,
    }
    line = epsilon_line({**record, "secure_aggregation": True})
    assert "against: the server, another client and the public" in line
    assert "fewer than privacy.secagg.reconstruction_threshold clients collude" in line
    assert "secure aggregation is not in use" not in line
    assert "else ε₁ = 48.8 per upload" in line
    # The record of a run without it (or from before it existed) still does not name it.
    assert "against: another client and the public" in epsilon_line(record)
    # The report finds it from the rounds' aggregation records too.
    history = [{"privacy": record, "aggregation": {"secure_aggregation": {"bits": 24}}}]
    assert final_epsilon_line(history) == line
    assert guarantee_clause("client", "server", None, True).startswith("against: another")


def test_plan_round_trip_keeps_secure_aggregation(tmp_path):
    cfg = load_config(None, DISTRIBUTED)
    plan = make_plan(cfg, [20] * 8)
    plan.save(tmp_path)
    saved = json.loads((tmp_path / PLAN_FILE).read_text(encoding="utf-8"))
    assert saved["secure_aggregation"] is True
    loaded = PrivacyPlan.load(tmp_path)
    assert loaded == plan
    assert loaded.threat_model["server"]["guarantee"].startswith(EPSILON)


def test_plan_saved_before_secure_aggregation_still_loads(tmp_path):
    cfg = load_config(
        None, ["privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=1.0"]
    )
    saved = dataclasses.asdict(make_plan(cfg, [20] * cfg.federation.num_clients))
    del saved["secure_aggregation"]
    (tmp_path / PLAN_FILE).write_text(json.dumps(saved), encoding="utf-8")
    loaded = resumed_plan(cfg, tmp_path)
    assert loaded is not None and loaded.secure_aggregation is False
    assert loaded.threat_model["server"]["guarantee"].startswith("only ε₁")


def test_a_clients_own_model_is_outside_epsilon_and_the_line_says_so():
    # finetune's result, fedsa's B and ditto's adapter are trained on raw data, never sent
    for level, noise_at, secure in COLUMNS:
        personal = threat_model(level, noise_at, secure)["personal"]
        assert personal.holds == (level == "example"), (level, noise_at, secure)
    clause = guarantee_clause("client", "clients", 0.5, personalization="finetune")
    assert "not a client's own model (never sent, trained outside ε)" in clause
    assert "own model" not in guarantee_clause("client", "clients", 0.5)
    # example level: fedsa's B is an iterate of the accounted DP-SGD run
    assert "own model" not in guarantee_clause("example", "server", personalization="fedsa")
