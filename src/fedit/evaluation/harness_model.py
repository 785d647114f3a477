"""lm-eval's ``HFLM`` around fedit's loaded model, reporting its batches to fedit's progress.

Only ``evaluation.harness`` imports this module, lazily: importing it needs ``fedit[lmeval]``.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from fedit.client.evaluate import report_batch


class ProgressLM(HFLM):
    """``HFLM(pretrained=<model object>)``: every forward pass and generation reports its rows
    to ``batch_progress`` (the CLI's bar) in place of lm-eval's own progress bars."""

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        return super().loglikelihood(requests, disable_tqdm=True)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        return super().loglikelihood_rolling(requests, disable_tqdm=True)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        return super().generate_until(requests, disable_tqdm=True)

    def _model_call(self, inps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = super()._model_call(inps, *args, **kwargs)  # (B, T, vocab)
        report_batch(inps.shape[0])
        return logits

    def _model_generate(self, context: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tokens = super()._model_generate(context, *args, **kwargs)  # (B, T + new)
        report_batch(context.shape[0])
        return tokens
