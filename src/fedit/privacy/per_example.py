"""Per-example gradients of the trainable LoRA tensors (opacus), clipped and summed.

opacus's ``GradSampleModule`` hooks every module with a trainable parameter; peft's
``lora_A`` / ``lora_B`` are ``nn.Linear``, so after one forward and backward of a batch whose
loss is a *sum* of per-example losses, each trainable parameter holds ``grad_sample`` of shape
(B, *param.shape): the gradient of each example's own loss. The frozen base model gets no
hooks. Hooks only record activations in train mode.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def per_example_gradients(model: nn.Module) -> Iterator[None]:
    """Hook ``model`` (trainable parameters only) so backward fills ``param.grad_sample``."""
    # opacus takes a second to import; only example-level runs pay for it (a Flower client
    # starts a fresh process for every message).
    from opacus import GradSampleModule

    with warnings.catch_warnings():
        # The frozen embeddings mean no input requires grad; the hooks still see the outputs.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        hooked = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        try:
            yield
        finally:
            hooked._close()


def clip_and_sum(
    params: dict[str, nn.Parameter], clip_norm: float, rows_per_unit: int = 1
) -> tuple[dict[str, torch.Tensor], int, int]:
    """Σ_i g_i · min(1, C / ‖g_i‖) over the units in ``grad_sample``, which is consumed.

    A unit is one example, or ``rows_per_unit`` batch rows that one loss term couples (a DPO
    pair's chosen and rejected answers): its gradient is the sum of its rows' per-row gradients,
    rows grouped unit-major (row ``j · U + u`` belongs to unit ``u``). This holds because no row's
    forward pass sees another row. ‖g_i‖ is the norm of unit i's gradient over every trainable
    tensor at once.

    Returns:
        (the clipped sum per parameter name, fp32), examples, examples that were clipped.
    """
    samples = {
        n: g for n, p in params.items() if (g := getattr(p, "grad_sample", None)) is not None
    }
    if not samples:
        return {}, 0, 0
    if rows_per_unit > 1:
        samples = {
            n: s.reshape(rows_per_unit, s.shape[0] // rows_per_unit, *s.shape[1:]).sum(dim=0)
            for n, s in samples.items()
        }
    norms = torch.sqrt(
        sum(s.float().reshape(s.shape[0], -1).pow(2).sum(dim=1) for s in samples.values())
    )  # (B,)
    factors = (clip_norm / (norms + 1e-12)).clamp(max=1.0)  # (B,)
    total = {n: torch.einsum("b,b...->...", factors, s.float()) for n, s in samples.items()}
    for param in params.values():
        param.grad_sample = None  # type: ignore[attr-defined]
        param.grad = None
    return total, int(norms.shape[0]), int((norms > clip_norm).sum())
