"""The model card (``MODEL_CARD.md``) of a version: what it is, how it did, how to use it."""

from __future__ import annotations

import json


def _pretrained_lines(t: dict, f: dict) -> list[str]:
    """Where the embedding started, and how it was fine-tuned (discriminative lr, gradual unfreezing)."""
    if not t.get("pretrained"):
        return []
    p = f.get("pretrained", {})
    return [f"- embedding initialised from {t['pretrained']} vectors `{p.get('path', '?')}` (sha256 "
            f"`{str(p.get('vectors_sha256', '?'))[:12]}`), fine-tuned at {t.get('embed_lr', 1.0)} x lr, frozen for "
            f"the first {t.get('freeze_embed_epochs', 0)} epoch(s)"]


def model_card(version: str, cfg: dict, metrics: dict, env: dict) -> str:
    """The Markdown card of ``version``, one section builder per heading, from what registration recorded: its
    config (``cfg``), metrics (``metrics``) and training environment (``env``)."""
    f = metrics["final"]
    lines = [f"# Model card: {version}", "",
             f"Binary sentiment classifier (P(positive) for review text), preset **{cfg['preset']}**.", ""]
    lines += _architecture_lines(cfg["model"], f)
    lines += _data_lines(cfg)
    lines += _training_lines(cfg["train"], metrics, env)
    lines += _validation_lines(f)
    lines += _trust_lines(f)
    lines += _abstain_lines(cfg.get("abstain"))
    lines += _int8_lines(metrics.get("int8"))
    lines += _use_lines(version, cfg.get("coverage"))
    return "\n".join(lines)


def _ngram_bag(m: dict) -> str:
    """What the linear n-gram bag counts: its n-grams and, when they are NB-scaled, the smoothing alpha."""
    grams = {1: "unigrams", 3: "unigrams + hashed bigrams and trigrams"}.get(m.get("ngram_n", 2),
                                                                            "unigrams + hashed bigrams")
    nb = f", NB log-count-ratio scaled (alpha {m['ngram_nb_alpha']})" if m.get("ngram_nb_alpha") else ""
    return f"{grams} ({m.get('ngram_buckets', 0):,} hash buckets){nb}"


def _encoder_lines(m: dict) -> list[str]:
    """The network's shape and its regularisation: an n-gram bag alone, or embedding -> encoder -> pooling."""
    if m["encoder"] == "none":
        return [f"- n-grams only (NBSVM style): a linear bag of {m['vocab_size']:,} {_ngram_bag(m)}, mean -> logit; "
                "no embedding or encoder",
                f"- n-gram dropout {m.get('ngram_dropout', 0.0)}"]
    enc = m["encoder"].upper() if m["encoder"] != "transformer" else "Transformer"
    direction = "bidirectional " if m["bidirectional"] and m["encoder"] != "transformer" else ""
    return [f"- embedding {m['vocab_size']} x {m['embed_dim']} (padding id 0) -> {m['layers']}-layer "
            f"{direction}{enc} (hidden {m['hidden']}) -> {m['pooling']} pooling -> linear logit",
            f"- dropout {m['dropout']}, embedding dropout {m['embed_dropout']}, "
            f"orthogonal init {m['orthogonal_init']}"]


def _architecture_lines(m: dict, f: dict) -> list[str]:
    """The Architecture section: the network, its size, its input and, for a hybrid, the n-gram half beside it."""
    shape, regularisation = _encoder_lines(m)
    lines = [
        "## Architecture",
        shape,
        f"- parameters: {f.get('params', '?'):,}" if isinstance(f.get("params"), int) else "- parameters: ?",
        regularisation,
        f"- input: up to {m['max_len']} tokens, {m['pad_side']}-padded"
        + ("" if m.get("exact_lengths", True) else " (lineage: runs over its pads)"),
    ]
    if m.get("ngram_buckets") and m["encoder"] != "none":
        lines += [
            f"- n-gram half: a linear bag of {m['vocab_size']:,} {_ngram_bag(m)}"
            + f"; logit = {1 - m['ngram_weight']:.2f} x encoder + {m['ngram_weight']:.2f} x n-grams",
            f"- validation accuracy of each half alone: encoder {f.get('val_accuracy_encoder', float('nan')):.4f}, "
            f"n-grams {f.get('val_accuracy_ngram', float('nan')):.4f}",
        ]
    return lines


def _data_lines(cfg: dict) -> list[str]:
    """The Data section: which prepared shards of which dataset, with the parameters that made them."""
    return ["", "## Data",
            f"- prepared shards `{cfg['prep_id']}` of dataset `{cfg.get('dataset', '?')}`; "
            f"prepare params: `{json.dumps(cfg.get('prepare', {}), sort_keys=True)}`"]


def _training_lines(t: dict, metrics: dict, env: dict) -> list[str]:
    """The Training section: how long it ran and where, its optimiser settings, its pretrained start if any."""
    f = metrics["final"]
    return ["", "## Training",
            f"- {len(metrics['history'])} epochs (stopped: {metrics.get('stopped')}), best epoch "
            f"{f.get('best_epoch')}, {metrics.get('seconds', 0):.0f} s on {env.get('device', '?')} "
            f"(torch {env.get('torch', '?')})",
            f"- batch {t['batch_size']}, lr {t['lr']} ({t['lr_schedule']}), weight decay {t['weight_decay']}, "
            f"grad clip {t['grad_clip']}, patience {t['patience']}",
            *_pretrained_lines(t, f)]


def _validation_lines(f: dict) -> list[str]:
    """The Validation metrics section (best checkpoint), its confusion matrix, and the test accuracy if measured."""
    cm = f.get("val_confusion", [[0, 0], [0, 0]])
    lines = ["", "## Validation metrics (best checkpoint)",
             "| accuracy | loss | F1 | n |",
             "|---|---|---|---|",
             f"| {f.get('val_accuracy', 0):.4f} | {f.get('val_loss', 0):.4f} | {f.get('val_f1', 0):.4f} "
             f"| {f.get('val_n')} |",
             "",
             f"Confusion matrix (rows true neg/pos, columns predicted neg/pos): {cm}"]
    if "test_accuracy" in f:
        lines += ["", f"Test accuracy: {f['test_accuracy']:.4f} (n={f.get('test_n')})"]
    return lines


def _use_lines(version: str, coverage: dict | None) -> list[str]:
    """The Use and Limitations sections (the coverage rule says which texts get no score); ends the card."""
    return ["", "## Use",
            f"    reviewflow predict \"a wonderful, moving film\" --model {version}",
            "", "## Limitations",
            "English movie reviews (IMDb-like); sarcasm, negation far from the cue word and other domains "
            "degrade accuracy. Words outside the vocabulary map to `<unk>`." + _coverage_line(coverage), ""]


def _coverage_line(rule: dict | None) -> str:
    if not rule:
        return ""
    return (f" A text with fewer than {rule.get('min_known')} known token(s), or under "
            f"{100 * float(rule.get('min_share', 0)):.0f}% known tokens, is labelled `unknown` with no score.")


def _abstain_lines(rec: dict | None) -> list[str]:
    """The ``--max-error`` section: per stated error rate, the margin chosen on validation, the share of rows it
    still labels and their error rate there (``config.json`` ``"abstain"``, :mod:`pipeline.model.abstain`)."""
    if not rec:
        return []
    conf = 1 - float(rec.get("delta", 0.05))
    how = (f"With `--max-error A` a text whose score is closer to 0.5 than the margin below is labelled `unknown` "
           f"with no score. Each margin is the smallest of {rec.get('candidates', '?')} fixed candidates whose "
           f"one-sided Clopper-Pearson bound on the error rate of the validation rows it keeps, at "
           f"{conf:.0%} confidence shared over the candidates (Bonferroni), is at most A; "
           f"{rec.get('rows', 0):,} labelled validation rows ({rec.get('errors', 0):,} wrong at 0.5 with every "
           "row labelled). They also chose the checkpoint and the temperature: the bound is a little optimistic.")
    lines = ["", "## Unsure texts (`--max-error`, off by default)", how,
             "", "| stated error (A) | margin | labels when P >= | coverage | validation error | bound |",
             "|---|---|---|---|---|---|"]
    for key, t in sorted(rec.get("max_error", {}).items(), key=lambda kv: float(kv[0])):
        if t.get("margin") is None:
            lines.append(f"| {key} | none met it | - | 0 | - | - |")
            continue
        lines.append(f"| {key} | {t['margin']:.4f} | {0.5 + t['margin']:.4f} or <= {0.5 - t['margin']:.4f} "
                     f"| {t['coverage']:.1%} | {t['val_error']:.4f} | {t['error_bound']:.4f} |")
    return lines


def _int8_lines(q: dict | None) -> list[str]:
    """The model card's CPU int8 section, from the registration's measurements (``metrics["int8"]``)."""
    if not q:
        return []
    mode = "static int8" if q.get("mode") else "dynamic int8: retired, this version scores in fp32"
    lines = ["", f"## CPU scoring precision ({mode})",
             f"- decision: **int8: {'true' if q['int8'] else 'false'}**: {q.get('reason', '')}"]
    if "int8_val_accuracy" in q:
        lines += [f"- validation accuracy ({q['val_rows']:,} rows): fp32 {q['fp32_val_accuracy']:.4f}, int8 "
                  f"{q['int8_val_accuracy']:.4f} (delta {q['delta_points']:+.2f} points)",
                  f"- speed on a fixed sample of {q['sample_rows']:,} validation rows, scored as CPU scoring runs "
                  f"them ({q.get('threads')} thread(s), a batch per thread; torch {q.get('torch')}): fp32 "
                  f"{q['fp32_rows_per_s']:,.0f} rows/s, int8 "
                  f"{q['int8_rows_per_s']:,.0f} ({q['speedup']:.2f}x)"]
    lines.append("- CPU scoring follows this decision (a predictor loaded with `precision=\"fp32\"` ignores it); "
                 "CUDA scores in bf16")
    lines.append("- a CPU score depends only on its text and this version, in fp32 and in int8 (activation "
                 "ranges fixed at registration, in `config.json` `int8_static`): never on the texts scored with it")
    return lines


def _trust_lines(f: dict) -> list[str]:
    """The model card's calibration and short-text section, from the final metrics (``f``)."""
    lines = ["", "## Calibration and short texts"]
    if f.get("temperature") is None:
        lines.append("- not calibrated (trained before calibration existed): scores are sigmoid(logit), T = 1")
    else:
        n = f.get("val_n")
        lines += [
            f"- temperature T = {f['temperature']:.4f}, fitted on the {n:,} validation reviews by minimising their "
            "NLL; scores are sigmoid(logit / T), so labels, accuracy and ranking do not change"
            if isinstance(n, int) else f"- temperature T = {f['temperature']:.4f}",
            f"- ECE (15 equal-width confidence bins): {f['val_ece_before']:.4f} before, {f['val_ece_after']:.4f} "
            f"after scaling on the same rows"
            + (f" ({f['val_ece_after_crossfit']:.4f} with T fitted on the other half of them)"
               if f.get("val_ece_after_crossfit") is not None else ""),
            "- reliability diagram: `reliability.png`"]
    if f.get("val_accuracy_short") is not None:
        head, tail = f.get("short_tokens", [20, 20])
        lines.append(f"- short texts (validation reviews cut to their first {head} and last {tail} tokens): "
                     f"accuracy {f['val_accuracy_short']:.4f}, against {f.get('val_accuracy', float('nan')):.4f} "
                     "on the full reviews"
                     + (f"; their ECE after scaling {f['val_ece_short']:.4f}" if f.get("val_ece_short") is not None
                        else ""))
        if f.get("temperature_bands") is not None:
            lines += _band_lines(f)
        elif f.get("temperature_short") is not None:
            lines.append(f"- texts of at most {head + tail} tokens use their own temperature T = "
                         f"{f['temperature_short']:.4f}, fitted on those cut reviews: their ECE "
                         f"{f.get('val_ece_short_before', float('nan')):.4f} unscaled, "
                         f"{f.get('val_ece_short_full_t', float('nan')):.4f} with the full-review T, "
                         f"{f['val_ece_short']:.4f} with their own")
    return lines


def _band_lines(f: dict) -> list[str]:
    """Temperature by text length, and accuracy and ECE per length band of the held-out short texts it was
    fitted on (the validation reviews' sentences, spans and 20+20-token cuts) and of the reviews."""
    rows = f.get("calibration_short_rows") or {}
    bands = ", ".join(f"up to {n} tokens T = {t:.4f}" for n, t in f["temperature_bands"])
    lines = [f"- temperature by text length: {bands}; longer texts T = {f['temperature']:.4f} (fitted on "
             f"{rows.get('spans', 0):,} sentences and 2-3 sentence spans of the validation reviews and their "
             f"{rows.get('cuts', 0):,} first/last-token cuts, with the reviews of each band's length; a band with too "
             f"few texts takes the next one's T)"]
    if f.get("calibration_bands"):
        lines += ["", "| text length (tokens) | texts | accuracy | ECE, whole-review T | ECE, its band's T |",
                  "|---|---|---|---|---|"]
        lines += [f"| {b['band']} | {b['n']:,} | {b['accuracy']:.4f} | {b['ece_whole_t']:.4f} | {b['ece']:.4f} |"
                  for b in f["calibration_bands"]]
        if isinstance(f.get("val_n"), int) and f.get("val_ece_after") is not None:
            served = f.get("val_ece_served", f["val_ece_after"])     # each review with its own length's T
            lines.append(f"| whole validation reviews | {f['val_n']:,} | {f.get('val_accuracy', float('nan')):.4f} "
                         f"| {f['val_ece_after']:.4f} | {served:.4f} |")
    return lines
