"""Load model weights, checked: the one way weights get into a ``SentimentModel`` (train, registry, inference).

``load_model`` refuses, with one clear line each, everything that used to surface as a deep traceback:

* a missing file (``NotFoundError``);
* bytes that do not match the SHA-256 recorded at registration (``IntegrityError``: modified file);
* a file that is not safetensors at all: a pickle, a zip, random bytes, a truncated file
  (``IntegrityError``; safetensors never unpickles, so nothing in the file is ever executed);
* tensors whose names or shapes disagree with ``ModelConfig`` (``IntegrityError`` listing the first few
  differences, e.g. ``encoder.layers.0.0.weight_hh_l0: file [48, 16] vs config [96, 32]``);
* NaN or infinite values (``IntegrityError``: such a model scores everything NaN).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pipeline.core.errors import IntegrityError, NotFoundError
from pipeline.model.network import ModelConfig, SentimentModel
from pipeline.core.storage import sha256_file

SHOWN_MISMATCHES = 4       # differences quoted in one error line


def load_model(weights: Path, model_config: ModelConfig, device="cpu", *,
               sha256: str | None = None) -> SentimentModel:
    """A ``SentimentModel(model_config)`` with the weights in ``weights`` (safetensors), in eval mode on
    ``device``. ``sha256``: the digest recorded when the weights were registered; checked first."""
    weights = Path(weights)
    if not weights.is_file():
        raise NotFoundError(f"weights file {weights} does not exist; re-register or retrain the model")
    if sha256 is not None and sha256_file(weights) != sha256:
        raise IntegrityError(f"weights of {weights} do not match the registered SHA-256 {sha256[:12]}...: "
                             "the file was modified; re-register or retrain")
    state = _read_safetensors(weights)
    model = SentimentModel(model_config)
    check_state(str(weights), state, model.state_dict())
    model.load_state_dict(state)
    return model.to(device).eval()


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise IntegrityError(f"{weights} is not a safetensors weights file ({_first_line(exc)}); "
                             "re-register or retrain the model") from None


def check_state(source: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """``state`` has the tensor names and shapes of ``expected`` (a fresh model's ``state_dict()``) and only
    finite values; else one ``IntegrityError`` line naming ``source`` and the first few problems."""
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: file {list(state[k].shape)} vs config {list(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (+{len(problems) - SHOWN_MISMATCHES} more)" if len(problems) > SHOWN_MISMATCHES else ""
        raise IntegrityError(f"weights in {source} do not fit their model config: "
                             f"{'; '.join(problems[:SHOWN_MISMATCHES])}{more}; the config.json and the weights "
                             "come from different models: re-register or retrain")
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise IntegrityError(f"weights in {source} hold NaN or infinite values ({', '.join(bad[:SHOWN_MISMATCHES])})"
                             "; the file is corrupt or training diverged: retrain")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
