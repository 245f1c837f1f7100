"""``reviewflow predict "text" ...``: P(positive), label and coverage for ad-hoc sentences."""

from __future__ import annotations

from typing import List, Optional

import typer

from flows.cli.common import WarehouseOption, warehouse_from


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        texts: List[str] = typer.Argument(..., help="one or more review texts (quote each)"),
        model: str = typer.Option("champion", "--model", "-m", help="model version, or `champion`"),
        device: str = typer.Option("cpu", "--device", help="where the model runs: cpu, cuda, cuda:N, auto"),
        threshold: float = typer.Option(0.5, help="P(positive) at or above which the label is positive"),
        top_k: int = typer.Option(5, "--top-k", help="tokens (attention) or phrases (n-gram half) to show"),
        max_error: Optional[float] = typer.Option(
            None, "--max-error", help="stated error rate (one the model recorded: 0.01, 0.02, 0.05, 0.1): a text "
                                      "scored too close to 0.5 for it is 'unknown', as `score --max-error` labels it"),
        warehouse: WarehouseOption = None,
    ) -> None:
        """Score sentences with the champion (or --model VERSION): P(positive), label, coverage, and why.

        \b
        Coverage: how many of the text's words the model knows. Below the rule recorded with the model
        (by default at least 1 known word and 50% of the words known) the label is 'unknown' and there
        is no score, as in the scored tables: the model does not guess at text it cannot read.
        --max-error A: also 'unknown' when the score is too close to 0.5 for the error rate A on the
        validation reviews (the margin recorded with the model, see its MODEL_CARD.md).
        Why: attention models list the tokens they attended to most; models with an n-gram half (the
        default preset) list the words and word pairs that pushed the logit most, signed (+ = positive).
        Examples:
          reviewflow predict "A wonderful, moving film." "Two hours I will never get back."
          reviewflow predict "Not bad at all" --model v0003-default-20260101120000
        """
        from pipeline.serve.predictor import load_predictor    # deferred: torch loads only when the command runs

        if max_error is not None and threshold != 0.5:
            raise typer.BadParameter("--max-error states an error rate of the labels at 0.5; drop --threshold")
        p = load_predictor(warehouse_from(warehouse, reads=("models",)), model, device=device, max_error=max_error)
        pred = p.predict_with_coverage(texts)
        typer.echo(f"model {p.version}")
        for i, text in enumerate(texts):
            if pred.tokens[i] == 0:  # nothing to score
                typer.echo(f"    nan  -         {text!r} (no tokens)")
                continue
            known = f"coverage {pred.coverage[i]:.0%} ({pred.known[i]}/{pred.tokens[i]} words known)"
            if not pred.readable[i]:
                typer.echo(f"      -  unknown   {text!r}  {known}")
                typer.echo(f"         not scored: the model needs {p.coverage_rule.describe()}")
                continue
            if pred.unsure is not None and pred.unsure[i]:
                typer.echo(f"      -  unknown   {text!r}  {known}")
                typer.echo(f"         unsure: at --max-error {max_error:g} the model labels only scores >= "
                           f"{0.5 + p.abstain_margin:.3f} or <= {0.5 - p.abstain_margin:.3f}")
                continue
            prob = float(pred.score[i])
            label = "positive" if prob >= threshold else "negative"
            typer.echo(f"  {prob:.3f}  {label:<8}  {text!r}  {known}")
            if p.has_attention:
                top = p.explain(text, top_k=top_k)
                typer.echo("         attention: " + ", ".join(f"{w} {a:.2f}" for w, a in top))
            if p.has_ngrams:
                top = p.explain_phrases(text, top_k=top_k)
                typer.echo("         phrases:   " + ", ".join(f"{w!r} {v:+.2f}" for w, v in top))
