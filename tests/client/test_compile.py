"""train.compile: compiled steps agree with eager ones; a failed compilation falls back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from fedit.client import compile as compile_module
from fedit.client.train import train_local
from fedit.config import ConfigError, TrainConfig, load_config
from fedit.model import get_adapter_state
from helpers import tiny_lora


def _train_both(model, examples, **overrides):
    start = get_adapter_state(model)
    updates = []
    for compiled in (False, True):
        cfg = TrainConfig(
            local_steps=2, batch_size=4, micro_batch_size=4, autocast="none",
            group_by_length=False, compile=compiled, **overrides,
        )  # fmt: skip
        updates.append(
            train_local(model, examples, cfg, client_id=0, lr=1e-2, seed=0, global_state=start)
        )
    return updates


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on a CPU
def test_compiled_and_eager_steps_agree(tiny_model_dir: Path) -> None:
    model, _, examples = tiny_lora(tiny_model_dir)
    eager, compiled = _train_both(model, examples)
    assert compile_module.CompiledTraining(model, True).active  # it really compiled
    assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-4)
    for key, value in eager.state.items():
        torch.testing.assert_close(compiled.state[key], value, rtol=1e-3, atol=1e-5)
    compile_module.forget(model)


def test_a_failed_compilation_falls_back_to_eager(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, _, examples = tiny_lora(tiny_model_dir)

    class BrokenCompiled:
        """Like torch's OptimizedModule (attributes forwarded), but its call fails."""

        def __init__(self, module, **kwargs):
            self._orig_mod = module

        def __getattr__(self, name):
            return getattr(self._orig_mod, name)

        def __call__(self, *args, **kw):
            self._orig_mod(*args, **kw).logits.sum().backward()  # half a step's gradients
            raise RuntimeError("backend 'inductor' failed\nlong traceback ...")

    monkeypatch.setattr(torch, "compile", BrokenCompiled)
    with caplog.at_level(logging.WARNING, logger="fedit.client.compile"):
        eager, fallback = _train_both(model, examples)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "train.compile: falling back to eager: RuntimeError: backend 'inductor' failed"
    ]
    assert not compile_module.CompiledTraining(model, True).active
    assert fallback.train_loss == eager.train_loss
    assert all(torch.equal(fallback.state[k], v) for k, v in eager.state.items())


def test_compile_setting() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_module.compile_wanted("auto", cuda) and not compile_module.compile_wanted(
        "auto", cpu
    )
    assert compile_module.compile_wanted(True, cpu) and not compile_module.compile_wanted(
        False, cpu
    )
    assert load_config(None, ["train.compile=auto"]).train.compile == "auto"
    assert load_config(None, ["train.compile=true"]).train.compile is True
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["train.compile=maybe"])
