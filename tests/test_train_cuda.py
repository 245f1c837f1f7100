"""The CUDA training path (bf16 autocast, pinned memory, fused Adam). Imports no Prefect or DuckDB, so a
GPU machine with only torch, numpy, pyarrow and pytest runs it: ``python -m pytest tests/test_train_cuda.py``."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import Warehouse
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from pipeline.model.weights import load_model
from train_helpers import tiny_model, tiny_prep


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_training_on_cuda_with_bf16_autocast(tmp_path):
    wh = Warehouse(tmp_path / "wh").ensure()
    prep = tiny_prep(wh)
    res = train(prep, TrainConfig(epochs=6, batch_size=16, lr=0.02), tmp_path / "run", device="cuda",
                progress=False, model=tiny_model())
    assert res.device.startswith("cuda") and res.environment["gpu"]
    assert res.metrics["val_accuracy"] > 0.9
    assert res.metrics["optimizer_fused"]
    # the weights come back to the CPU and give the same predictions there (bf16 autocast only on CUDA)
    cpu = load_model(res.weights, res.model_config, "cpu")
    gpu = load_model(res.weights, res.model_config, "cuda")
    ids = torch.randint(2, res.model_config.vocab_size, (4, 20))
    lengths = torch.tensor([20, 11, 5, 1])
    with torch.no_grad():
        on_cpu, on_gpu = cpu(ids, lengths), gpu(ids.cuda(), lengths.cuda()).cpu()
    # cuDNN may use TF32 for the recurrent matmuls: equal to about 1e-3 relative, and the same labels
    assert torch.allclose(on_cpu, on_gpu, rtol=1e-2, atol=1e-2), (on_cpu, on_gpu)
    assert torch.equal(on_cpu > 0, on_gpu > 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_cuda_wide_and_deep_model_matches_cpu_and_ignores_padding(tmp_path):
    wh = Warehouse(tmp_path / "wh").ensure()
    prep = tiny_prep(wh)
    res = train(prep, TrainConfig(epochs=4, batch_size=16, lr=0.02, ngram_lr=0.2, part_loss=0.5), tmp_path / "run",
                device="cuda", progress=False, model=tiny_model(ngram_buckets=997))
    assert res.metrics["val_accuracy"] > 0.9
    net = load_model(res.weights, res.model_config, "cuda")
    ids = torch.randint(2, res.model_config.vocab_size, (1, 7), device="cuda")
    padded = torch.cat([ids, torch.zeros(1, 50, dtype=torch.long, device="cuda")], 1)
    n = torch.tensor([7], device="cuda")
    with torch.no_grad():
        assert torch.allclose(net(ids, n), net(padded, n), atol=1e-5)
