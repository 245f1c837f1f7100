"""Dynamic int8 for CPU scoring, decided once at registration from measurements, never guessed at scoring.

``torch.ao.quantization.quantize_dynamic`` stores the weights of ``nn.Linear``, ``nn.GRU`` and ``nn.LSTM`` as
int8 and quantizes their inputs on the fly (fbgemm GEMMs). What that buys in torch 2.13 on this CPU (one
thread, batch 128 x 200 tokens, embed 128, hidden 64): GRU 1.37x, Grid LSTM 1.32x, LSTM 0.80x (fp32 LSTM
already runs oneDNN's fused kernel), Elman RNN 0.93x (``nn.RNN`` has no dynamic int8 kernel: only the head is
quantized). The Transformer encoder's fast path fails on quantized Linear layers, and embeddings and the
n-gram bag are table lookups int8 does not speed up. So only models with a GRU or LSTM are measured (an
LSTM is then kept fp32 by its own timing); the others record ``int8: false`` with the reason.

Registration (:func:`decide`) measures, on the version's validation split: accuracy in fp32 and in int8
(the same batches :func:`pipeline.train.loop.evaluate` scores), and the speed of both on a fixed sample of
validation rows (CPU time on one core, as scoring runs a batch; best of a few runs). int8 is kept only when
the accuracy moves by at most ``Int8Rule.tolerance_points`` and it is not slower: a model that int8 hurts,
or does not speed up, scores in fp32. Scoring reads the decision (``config.json`` ``"int8"``) and quantizes
at load (:func:`quantize`, deterministic: the scales come from the weights alone).

int8 activations are quantized per batch (one range per tensor), so an int8 score can move in its 3rd-4th
decimal with the texts it is batched with (fp32 scores only by float rounding). That is the price of the speed-up,
and why the decision needs the accuracy check on real validation rows.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


#: module types with a dynamic int8 kernel in torch 2.13 on CPU (fbgemm / qnnpack)
QUANTIZABLE = (nn.Linear, nn.GRU, nn.LSTM)
#: the recurrent ones: without one of these, int8 only touches the small output head
RECURRENT = (nn.GRU, nn.LSTM)


def quantizable(model: nn.Module) -> list[str]:
    """Names of the recurrent modules of ``model`` that dynamic int8 would quantize (GRU/LSTM)."""
    return [name for name, m in model.named_modules() if isinstance(m, RECURRENT)]


def quantize(model: nn.Module) -> nn.Module:
    """A dynamic-int8 copy of ``model`` (its Linear, GRU and LSTM layers; ``model`` is left as it was), in eval
    mode on the CPU. Deterministic: the weight scales are the weights' own min/max."""
    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():      # torch 2.13 marks torch.ao.quantization deprecated (torchao successor)
        warnings.simplefilter("ignore")
        engines = torch.backends.quantized.supported_engines
        if torch.backends.quantized.engine not in ("fbgemm", "x86", "qnnpack", "onednn"):
            torch.backends.quantized.engine = "x86" if "x86" in engines else engines[-1]
        return torch.ao.quantization.quantize_dynamic(model, set(QUANTIZABLE), dtype=torch.qint8)
