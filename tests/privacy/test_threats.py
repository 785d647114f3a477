"""The threat model: docs/privacy.md's table is the code's, and a plan states its own column."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from fedit.config import load_config
from fedit.privacy.plan import epsilon_line
from fedit.privacy.threats import EPSILON, NO_GUARANTEE, threat_model, threat_table_markdown
from fedit.server.privacy_budget import make_plan

DOCS = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"


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
