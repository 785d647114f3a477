"""Where a Flower site keeps its clients' state: the run folder in simulation, an owner-only
``state-dir/<run id>`` when deployed, and nowhere for a run that keeps none."""

from __future__ import annotations

import stat

import pytest
import torch

from fedit.client.state import Stamp, StampError
from fedit.config import load_config
from fedit.engines.flower_site import site_store
from fedit.types import FitConfig, FitInstruction

RUN_ID = "0123456789abcdef0123456789abcdef"


def _instruction(**config) -> FitInstruction:
    return FitInstruction(2, {}, FitConfig(lr=0.1, rank=2, seed=0, **config))


def _stamped(run_id: str = RUN_ID) -> FitInstruction:
    stamp = Stamp(run_id, (1,), 1)
    return FitInstruction(2, {}, stamp.stamped(FitConfig(lr=0.1, rank=2, seed=0)))


def test_simulation_keeps_state_in_the_run_folder(tmp_path):
    cfg = load_config(None, ["engine=flower-simulation", f"output_dir={tmp_path / 'run'}"])
    assert site_store(cfg, {}, _instruction()) is None  # unstamped: no state kept
    store = site_store(cfg, {}, _stamped())
    assert store is not None and store.root == tmp_path / "run" and not store.private


def test_a_deployed_site_keeps_state_private_in_its_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, ["engine=flower", "flower.insecure=true", "output_dir=/server/run"])
    default = site_store(cfg, {}, _stamped())
    assert default is not None and default.root == tmp_path / "cache" / "site-state" / RUN_ID
    store = site_store(cfg, {"state-dir": str(tmp_path / "state")}, _stamped())
    assert store is not None and store.root == tmp_path / "state" / RUN_ID
    path = store.save(2, Stamp(RUN_ID, (1,), 1), {"scaffold/control/w": torch.zeros(2)})
    assert path.parent == tmp_path / "state" / RUN_ID / "clients" / "2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (tmp_path / "state", store.root, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    with pytest.raises(StampError, match="is not 32 hex digits"):
        site_store(cfg, {}, _stamped("../../elsewhere/0123456789abcdef0123"))
