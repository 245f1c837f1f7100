"""The training loop: learns, checkpoints bit-exactly, stops on budget/patience, is deterministic."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pipeline.core.config import Warehouse
from pipeline.core.errors import ReviewflowError
from pipeline.train.presets import PRESETS, resolve_preset
from pipeline.train.checkpoint import save_weights
from pipeline.train.config import BEST, CHECKPOINT, RESULT, TrainConfig, TrainResult
from pipeline.model.device import pick_device
from pipeline.train.loop import train
from pipeline.model.weights import load_model
from train_helpers import tiny_model, tiny_prep


def expected_auto_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"


def test_device_auto_is_cuda_where_there_is_one_else_cpu():
    assert pick_device("auto").type == expected_auto_device()      # cpu on this machine, cuda on a GPU box


def test_learns_a_separable_dataset(tiny_prep_dir, tmp_path):
    res = train(tiny_prep_dir, TrainConfig(epochs=6, batch_size=16, lr=0.02, threads=1), tmp_path / "run",
                progress=False, model=tiny_model())            # device "auto"
    assert res.device.split(":")[0] == expected_auto_device() and res.environment["device"] == res.device
    assert res.metrics["val_accuracy"] > 0.95, res.history
    assert res.stopped == "completed" and len(res.history) == 6
    rec = res.history[0]
    for key in ("train_loss", "val_loss", "val_accuracy", "seconds", "tokens_per_s"):
        assert rec[key] > 0
    assert res.metrics["val_confusion"][0][0] + res.metrics["val_confusion"][1][1] == round(
        res.metrics["val_accuracy"] * res.metrics["val_n"])
    assert (tmp_path / "run" / RESULT).exists() and TrainResult.load(tmp_path / "run").metrics == res.metrics
    # calibrated on validation after training (issue 11): a temperature, ECE before/after, the short-text figure
    m = res.metrics
    assert 0.1 <= m["temperature"] <= 10 and 0 <= m["val_ece_after"] <= 1 and 0 <= m["val_ece_before"] <= 1
    assert res.calibration["temperature"] == m["temperature"]
    assert m["val_accuracy_short"] == m["val_accuracy"]     # these reviews are all <= 32 tokens: the 20+20 cut keeps them


def test_weights_round_trip_bit_exact(tiny_prep_dir, tmp_path):
    res = train(tiny_prep_dir, TrainConfig(epochs=1, batch_size=32, threads=1), tmp_path / "run", progress=False,
                model=tiny_model(pooling="attention"))
    model = load_model(res.weights, res.model_config)
    save_weights(model, tmp_path / "again.safetensors")
    a, b = load_file(str(res.weights)), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(1, res.model_config.vocab_size, (3, 7))
    lengths = torch.tensor([7, 3, 5])
    again = load_model(tmp_path / "again.safetensors", res.model_config)
    assert torch.equal(model(ids, lengths)[0], again(ids, lengths)[0])
    # the resumable checkpoint holds only tensors and plain data: it loads with weights_only=True
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.equal(ckpt["model"][k], a[k]) for k in a)


def test_seeded_runs_are_identical_on_cpu(tiny_prep_dir, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, threads=1)
    r1 = train(tiny_prep_dir, cfg, tmp_path / "a", progress=False, model=tiny_model(dropout=0.2, embed_dropout=0.2))
    r2 = train(tiny_prep_dir, cfg, tmp_path / "b", progress=False, model=tiny_model(dropout=0.2, embed_dropout=0.2))
    a, b = load_file(str(r1.weights)), load_file(str(r2.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_loss"] for h in r1.history] == [h["val_loss"] for h in r2.history]


def test_time_budget_stops_cleanly_and_keeps_a_model(tiny_prep_dir, tmp_path):
    res = train(tiny_prep_dir, TrainConfig(epochs=50, batch_size=8, max_seconds=1e-9, threads=1), tmp_path / "run",
                progress=False, model=tiny_model())
    assert res.stopped == "time_budget"
    assert len(res.history) == 1 and res.history[0]["partial"]
    assert (tmp_path / "run" / BEST).exists()


def test_early_stopping_on_validation_loss(tiny_prep_dir, tmp_path):
    # lr=1e-30 (lr must be > 0): too small to move a float32 weight, so validation loss never improves after
    # the first epoch and patience=2 stops after epoch 3
    res = train(tiny_prep_dir, TrainConfig(epochs=10, lr=1e-30, patience=2, threads=1), tmp_path / "run",
                progress=False, model=tiny_model())
    assert res.stopped == "early_stopping" and len(res.history) == 3
    assert res.metrics["best_epoch"] == 1


def test_resume_continues_and_matches_an_uninterrupted_run(tiny_prep_dir, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, threads=1)
    model = tiny_model(dropout=0.2, embed_dropout=0.1)
    full = train(tiny_prep_dir, cfg, tmp_path / "full", progress=False, model=model)

    def crash_after_epoch_2(rec):
        if rec["epoch"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_prep_dir, cfg, tmp_path / "part", progress=False, model=model, on_epoch=crash_after_epoch_2)
    assert not (tmp_path / "part" / RESULT).exists()
    assert torch.load(tmp_path / "part" / CHECKPOINT, weights_only=True)["epoch"] == 1
    seen = []
    resumed = train(tiny_prep_dir, cfg, tmp_path / "part", progress=False, model=model, on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [3]                     # only the missing epoch ran
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    a, b = load_file(str(full.weights)), load_file(str(resumed.weights))
    assert all(torch.equal(a[k], b[k]) for k in a)               # bit-exact: RNG + optimizer state restored
    with pytest.raises(ReviewflowError, match="different configuration"):
        (tmp_path / "part" / RESULT).unlink()
        train(tiny_prep_dir, dataclasses.replace(cfg, lr=0.5), tmp_path / "part", progress=False, model=model)


CHILD = """
import json, sys
from pipeline.train.loop import train
from pipeline.train.presets import resolve_preset
spec = resolve_preset("default", {overrides!r})
res = train({prep!r}, spec.train, {out!r}, device="cpu", progress=True, model=spec.model)
print(json.dumps({{"stopped": res.stopped, "epochs": len(res.history)}}))
"""


@pytest.mark.subprocess
def test_resume_after_sigkill(tiny_prep_dir, tmp_path):
    """A real training process killed mid-run resumes from its last saved epoch and finishes. Its output goes
    to files, never to pipes nobody reads (a full pipe would stall the child)."""
    out = tmp_path / "run"
    overrides = dict(epochs=40, hidden=16, embed_dim=16, batch_size=8, threads=1, max_seconds=None, patience=None,
                     ngram_buckets=997, pretrained=None)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(overrides=overrides, prep=str(tiny_prep_dir), out=str(out)))
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT)
    import time

    deadline = time.time() + 120
    saved = -1
    while time.time() < deadline and proc.poll() is None:
        if (out / CHECKPOINT).exists():
            try:
                saved = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
            except Exception:  # being replaced right now
                pass
            if saved >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.kill()
    proc.wait()
    assert not (out / RESULT).exists()
    saved = torch.load(out / CHECKPOINT, weights_only=True)["epoch"]
    again = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {out} at epoch {saved + 2}" in again.stderr
    res = TrainResult.load(out)
    assert [h["epoch"] for h in res.history] == list(range(1, 41))


@pytest.mark.subprocess
def test_pipeline_never_imports_prefect():
    code = ("import sys, pipeline.train.job, pipeline.train.loop, pipeline.serve.predictor, pipeline.train.promotion;"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'prefect']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_presets_resolve_and_overrides_go_to_their_owner():
    base = resolve_preset("baseline")
    assert (base.model.encoder, base.model.embed_dim, base.model.hidden, base.model.pooling) == ("rnn", 100, 32, "last")
    assert not base.model.bidirectional and not base.model.exact_lengths
    assert (base.train.batch_size, base.train.lr, base.train.epochs, base.train.grad_clip) == (32, 1e-3, 10, None)
    assert base.prepare["max_len"] == 512 and base.prepare["pad_side"] == "left" and base.prepare["min_freq"] == 1
    spec = resolve_preset("default", {"max_len": 100, "hidden": 8, "lr": 0.5, "max_minutes": 2, "truncate": "tail"})
    assert spec.prepare["max_len"] == 100 and spec.model.max_len == 100 and spec.prepare["truncate"] == "tail"
    assert spec.model.hidden == 8 and spec.train.lr == 0.5 and spec.train.max_seconds == 120
    with pytest.raises(ReviewflowError, match="unknown training option"):
        resolve_preset("default", {"colour": "red"})
    with pytest.raises(ReviewflowError, match="unknown preset"):
        resolve_preset("fastest")
    assert set(PRESETS) >= {"baseline", "default", "best"}
    for p in PRESETS.values():
        assert set(p) >= {"model", "train", "prepare", "description"}


def test_baseline_preset_learns_on_front_padded_shards(tmp_path):
    """The lineage Elman RNN (last state over front-padded rows) learns the synthetic signal: a broken model
    (no gradient, pads read as tokens, labels mixed up) stays near the 50% of guessing."""
    wh = Warehouse(tmp_path / "wh").ensure()
    spec = resolve_preset("baseline", {"max_len": 32, "epochs": 10, "embed_dim": 16, "threads": 1, "lr": 0.01,
                                       "batch_size": 8})
    prep = tiny_prep(wh, **(spec.prepare | {"val_fraction": 0.25}))
    res = train(prep, spec.train, tmp_path / "run", progress=False, model=spec.model)
    assert res.model_config.pad_side == "left" and not res.model_config.exact_lengths
    assert res.model_config.vocab_size == len((prep / "vocab.txt").read_text().splitlines())
    assert len(res.history) == 10 and res.metrics["val_accuracy"] > 0.8, res.history
    assert res.history[0]["tokens_per_s"] > 0


@pytest.mark.parametrize("select", ["val_loss", "val_accuracy"])
def test_best_checkpoint_follows_the_selection_metric(tiny_prep_dir, tmp_path, select):
    res = train(tiny_prep_dir, TrainConfig(epochs=4, batch_size=16, lr=0.05, threads=1, patience=None, select=select),
                tmp_path / "run", progress=False, model=tiny_model())
    if select == "val_loss":
        want = min(res.history, key=lambda r: r["val_loss"])
    else:
        want = max(res.history, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    assert res.metrics["best_epoch"] == want["epoch"]
    assert res.metrics["val_accuracy"] == pytest.approx(want["val_accuracy"])   # the saved weights are that epoch's


@pytest.mark.parametrize("steps", [1, 2, 3, 9, 10, 11, 352])
def test_onecycle_schedule_works_for_any_number_of_steps_and_per_group_peaks(steps):
    from pipeline.model.network import ModelConfig, SentimentModel
    from pipeline.train.loop import make_optimizer, make_scheduler

    net = SentimentModel(ModelConfig(vocab_size=50, embed_dim=4, hidden=4, ngram_buckets=31))
    cfg = TrainConfig(epochs=1, lr=0.01, ngram_lr=0.5, lr_schedule="onecycle")
    opt = make_optimizer(net, cfg, torch.device("cpu"))
    sched = make_scheduler(opt, cfg, steps)
    seen = []
    for _ in range(steps):
        opt.step()
        sched.step()
        seen.append([g["lr"] for g in opt.param_groups])
    peak = [max(s[i] for s in seen) for i in range(2)]
    assert len(opt.param_groups) == 2 and all(s[1] / s[0] == pytest.approx(50) for s in seen)
    assert peak[0] <= 0.01 + 1e-12 and peak[1] <= 0.5 + 1e-9
    if steps >= 3:
        assert seen[-1][0] < peak[0]        # it anneals


def test_unknown_selection_metric_is_refused(tiny_prep_dir, tmp_path):
    with pytest.raises(ReviewflowError, match="select"):
        train(tiny_prep_dir, TrainConfig(epochs=1, select="f1"), tmp_path / "run", progress=False, model=tiny_model())


def test_wide_and_deep_model_learns_with_nb_scaled_ngrams(tiny_prep_dir, tmp_path):
    res = train(tiny_prep_dir, TrainConfig(epochs=4, batch_size=16, lr=0.02, threads=1, ngram_lr=0.2, part_loss=0.5),
                tmp_path / "run", progress=False,
                model=tiny_model(ngram_buckets=997, ngram_dropout=0.2, ngram_nb_alpha=1.0))
    assert res.metrics["val_accuracy"] > 0.9
    net = load_model(res.weights, res.model_config)
    bag = net.ngrams
    assert bag.weight.weight.abs().sum() > 0 and bag.weight.weight[0].item() == 0   # the pad's weight stays 0
    assert bag.scale.abs().max() > 0.5 and bag.scale[0] == 0          # the NB ratios were fitted and saved
    ids = torch.randint(2, res.model_config.vocab_size, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], 1)
    with torch.no_grad():
        deep, wide, _ = net.forward_parts(padded, torch.tensor([6]))
        assert torch.allclose(net(ids, torch.tensor([6]))[0], net(padded, torch.tensor([6]))[0], atol=1e-6)
        assert torch.allclose(net(padded, torch.tensor([6]))[0], 0.5 * deep + 0.5 * wide)
        # the n-gram logit by hand: mean of weight * scale over the 6 unigrams and 5 bigrams
        v = (bag.weight.weight.squeeze(-1) * bag.scale)
        bi = bag.bucket(ids[0, :-1], ids[0, 1:])
        assert torch.allclose(wide, ((v[ids[0]].sum() + v[bi].sum()) / 11).unsqueeze(0), atol=1e-6)




def test_parse_overrides_reads_json_values_and_names_a_malformed_item():
    from pipeline.train.presets import parse_overrides

    got = parse_overrides(["epochs=3", "lr=0.5", "patience=null", "bidirectional=false", "pooling=attention",
                           "ngram-buckets=97"])
    assert got == {"epochs": 3, "lr": 0.5, "patience": None, "bidirectional": False, "pooling": "attention",
                   "ngram_buckets": 97}
    with pytest.raises(ReviewflowError, match="expected KEY=VALUE, got 'novalue'"):
        parse_overrides(["novalue"])
