"""privacy.secure_aggregation's refusals: each one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from fedit.cli.main import main
from helpers import tiny_args

SECURE = (
    "privacy.secure_aggregation=true",
    "engine=flower-simulation",
    "federation.num_clients=4",
    "federation.fraction_fit=1.0",
)
REFUSALS = {
    "in-process engine": (["engine=simulation"], "engine=simulation: privacy.secure_aggregation"),
    "exact": (["strategy.name=exact"], "strategy.name=exact: refused with privacy.secure"),
    "scaffold": (["strategy.name=scaffold"], "its control variates would travel beside"),
    "heterogeneous ranks": (
        ["strategy.name=exact", "lora.client_ranks=[4,8,4,8]"],
        "lora.client_ranks: refused with privacy.secure_aggregation",
    ),
    "robust defence": (["robust.method=krum"], "robust.method=krum: refused with privacy.secure"),
    "compression": (
        ["federation.upload_compression=int8"],
        "federation.upload_compression=int8: refused",
    ),
    "adaptive clip read by the server": (
        [
            "privacy.level=client",
            "privacy.noise_multiplier=1",
            "privacy.adaptive_clip=true",
            "privacy.noise_at=server",
        ],
        "privacy.adaptive_clip: refused with privacy.secure_aggregation=true and",
    ),
    "two clients": (["federation.num_clients=2"], "needs at least 3 clients a round"),
    "two a round": (["federation.fraction_fit=0.5"], "this config selects 2 of 4"),
    "bits that wrap": (["privacy.secagg.bits=30"], "use at most 29 bits"),
    "threshold above the neighbourhood": (
        ["privacy.secagg.neighbours=2", "privacy.secagg.reconstruction_threshold=3"],
        "must be at most the neighbourhood size 2 of a round's 4 clients",
    ),
    "one-share threshold": (
        ["privacy.secagg.reconstruction_threshold=1"],
        "privacy.secagg.reconstruction_threshold: must be >= 2",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_each_refusal_is_one_line_exit_2_and_writes_nothing(case, tiny_model_dir, tmp_path, capsys):
    overrides, expected = REFUSALS[case]
    out = tmp_path / "out"
    code = main(["run", *tiny_args(tiny_model_dir, out), *SECURE, *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_sound_combination_validates(tiny_model_dir, tmp_path, capsys):
    args = [*tiny_args(tiny_model_dir, tmp_path / "out"), *SECURE]
    args += ["privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=1"]
    assert main(["validate", "configs/quickstart.yaml", *args]) == 0
