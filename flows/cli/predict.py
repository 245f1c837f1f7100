"""``reviewflow predict "text" ...``: P(positive) and label for ad-hoc sentences."""

from __future__ import annotations

from typing import List

import typer

from flows.cli.common import WarehouseOption, warehouse_from


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        texts: List[str] = typer.Argument(..., help="one or more review texts (quote each)"),
        model: str = typer.Option("champion", "--model", "-m", help="model version, or `champion`"),
        threshold: float = typer.Option(0.5, help="P(positive) at or above which the label is positive"),
        top_k: int = typer.Option(5, "--top-k", help="tokens (attention) or phrases (n-gram half) to show"),
        warehouse: WarehouseOption = None,
    ) -> None:
        """Score sentences with the champion (or --model VERSION): P(positive), label, and why.

        \b
        Why: attention models list the tokens they attended to most; models with an n-gram half (the
        default preset) list the words and word pairs that pushed the logit most, signed (+ = positive).
        Examples:
          reviewflow predict "A wonderful, moving film." "Two hours I will never get back."
          reviewflow predict "Not bad at all" --model v0003-default-20260101120000
        """
        from pipeline.train.predictor import load_predictor    # deferred: torch loads only when the command runs

        p = load_predictor(warehouse_from(warehouse), model)
        probs = p.predict_proba(texts)
        typer.echo(f"model {p.version}")
        for text, prob in zip(texts, probs):
            if prob != prob:  # NaN: nothing to score
                typer.echo(f"    nan  -         {text!r} (no tokens)")
                continue
            label = "positive" if prob >= threshold else "negative"
            typer.echo(f"  {prob:.3f}  {label:<8}  {text!r}")
            if p.has_attention:
                top = p.explain(text, top_k=top_k)
                typer.echo("         attention: " + ", ".join(f"{w} {a:.2f}" for w, a in top))
            if p.has_ngrams:
                top = p.explain_phrases(text, top_k=top_k)
                typer.echo("         phrases:   " + ", ".join(f"{w!r} {v:+.2f}" for w, v in top))
