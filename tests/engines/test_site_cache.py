"""A site's base model cache (engines/flower_site): loaded once per process per run, and a
changed run (another model, other weights at the same path, another LoRA) reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from fedit.config import load_config
from fedit.engines import flower_site
from fedit.model.lora import get_adapter_state
from fedit.types import FitConfig, FitInstruction
from helpers import tiny_args

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
NODE = {"partition-id": 1, "num-partitions": 2}
FAST = ("data.synthetic.num_examples=80", "federation.num_clients=2", "train.local_steps=1")


@pytest.fixture(autouse=True)
def _fresh_cache():
    flower_site.clear_site_cache()
    yield
    flower_site.clear_site_cache()


def _cfg(model_dir: Path, tmp: Path, *extra: str):
    return load_config(QUICKSTART, tiny_args(model_dir, tmp / "run", *FAST, *extra))


def _train(cfg) -> dict[str, torch.Tensor]:
    """One round on the site from the LoRA init of a freshly loaded model of ``cfg``."""
    site = flower_site.load_site(cfg, NODE)
    start = {k: v.clone() for k, v in get_adapter_state(site.model).items()}
    instruction = FitInstruction(1, start, FitConfig(lr=1e-3, rank=cfg.lora.r, seed=7), {})
    return flower_site.train_site(cfg, NODE, instruction).state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_run_loads_once_over_several_rounds(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    models = {id(flower_site.load_site(cfg, NODE).model) for _ in range(4)}
    for _ in range(3):
        _train(cfg)
    assert flower_site.model_loads() == 1 and len(models) == 1


def test_changed_run_reloads_and_never_trains_the_stale_model(tmp_path_factory, tmp_path):
    first = build_tiny_model(tmp_path_factory.mktemp("first"), seed=0)
    second = build_tiny_model(tmp_path_factory.mktemp("second"), seed=1)
    expected = _train(_cfg(second, tmp_path))  # what model 2 gives from a cold cache
    flower_site.clear_site_cache()
    _train(_cfg(first, tmp_path))
    after_first = _train(_cfg(second, tmp_path))  # the cache held model 1
    assert flower_site.model_loads() == 2 and _same(after_first, expected)
    # Another LoRA shape, then another seed: each a reload.
    reshaped = _train(_cfg(second, tmp_path, "lora.r=2"))
    assert all(t.shape[0] == 2 for name, t in reshaped.items() if "lora_A" in name)
    _train(_cfg(second, tmp_path, "seed=3"))
    assert flower_site.model_loads() == 4


def test_new_weights_under_the_same_path_reload(tmp_path_factory, tmp_path):
    folder = tmp_path_factory.mktemp("model")
    build_tiny_model(folder, seed=0)
    cfg = _cfg(folder, tmp_path)
    _train(cfg)
    build_tiny_model(folder, seed=1)  # the site's copy replaced by other weights
    retrained = _train(cfg)
    assert flower_site.model_loads() == 2
    flower_site.clear_site_cache()
    assert _same(retrained, _train(cfg))


def test_site_worker_keeps_the_model_and_reports_failures(tiny_model_dir, tmp_path):
    from multiprocessing.connection import Client

    from fedit.config import save_config
    from fedit.engines.messages import pack_instruction, unpack_update
    from fedit.engines.site_worker import SiteWorkerError, start_worker, stop_worker, train_remotely

    cfg = _cfg(tiny_model_dir, tmp_path)
    site = flower_site.load_site(cfg, NODE)
    start = {k: v.clone() for k, v in get_adapter_state(site.model).items()}
    instruction = FitInstruction(1, start, FitConfig(lr=1e-3, rank=cfg.lora.r, seed=7), {})
    expected = flower_site.train_site(cfg, NODE, instruction).state  # this process's answer
    worker, folder = start_worker()
    try:
        replies = [
            unpack_update(
                train_remotely(str(folder), save_config(cfg), NODE, pack_instruction(instruction)),
                instruction,
            )
            for _ in range(2)
        ]
        assert [u.metrics["model_loaded"] for u in replies] == [1.0, 0.0]
        assert all(_same(u.state, expected) for u in replies)
        with pytest.raises(SiteWorkerError, match="test-fault crash"):
            crash = {**NODE, "test-fault": "crash"}
            train_remotely(str(folder), save_config(cfg), crash, pack_instruction(instruction))
        with pytest.raises(Exception, match="digest"):  # a caller without the key is refused
            Client(str(folder / "socket"), family="AF_UNIX", authkey=b"wrong")
        assert (folder / "authkey").stat().st_mode & 0o077 == 0
    finally:
        stop_worker(worker, folder)
    assert not folder.exists() and worker.poll() is not None


@pytest.mark.slow  # a worker's start-up (torch imports) for one lifecycle check
def test_site_worker_exits_when_its_launcher_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from fedit.engines.site_worker import start_worker; "
            "p, f = start_worker(); print(p.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    worker_pid = int(launcher.stdout.readline())
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail("the site worker outlived its launcher")
