"""``reviewflow models list|show``: the model registry (``promote``, ``compare``, ``alias``: flows/cli/model_ops.py)."""

from __future__ import annotations

import json

import typer

from flows.cli.common import WarehouseOption, echo_kv, warehouse_from


MODELS_HELP = ("Registered model versions and the champion pointer.\n\n"
               "\b\nExamples:\n  reviewflow models list\n  reviewflow models show champion\n"
               "  reviewflow models promote v0002-default-20260101120000\n\n"
               "Champions are per dataset; the serving champion (`champion`) only moves implicitly to a "
               "better model of its own dataset, measured on the same evaluation data.")


def register(app: typer.Typer) -> None:
    models = typer.Typer(help=MODELS_HELP, no_args_is_help=True)
    app.add_typer(models, name="models")
    models.command("list")(list_cmd)
    models.command("show")(show_cmd)
    models.command("verify")(verify_cmd)

    from flows.cli import model_ops

    model_ops.register(models)


def list_cmd(warehouse: WarehouseOption = None) -> None:
    """Every version, oldest first; `*` marks the serving champion, `+` the champion of its dataset."""
    from pipeline import registry             # deferred (as in every command): torch loads only when it runs

    wh = warehouse_from(warehouse, reads=("models",))
    versions, champ = registry.list_versions(wh), registry.champion(wh)
    per_dataset = set(registry.champions(wh).values())
    if not versions:
        typer.echo(f"no models in {wh.models}; train one with `reviewflow train --dataset NAME`")
        return
    typer.echo(f"  {'version':<40} {'dataset':<16} {'val_acc':>7} {'epochs':>6} {'encoder':<12} {'pooling':<9} "
               "prep_id")
    for mv in versions:
        m = mv.config["model"]
        enc = ("bi" if m["bidirectional"] and m["encoder"] != "transformer" else "") + m["encoder"]
        acc = f"{mv.val_accuracy:.4f}" if mv.val_accuracy is not None else "?"
        mark = "*" if mv.version == champ else ("+" if mv.version in per_dataset else " ")
        typer.echo(f"{mark} {mv.version:<40} {str(mv.config.get('dataset')):<16} {acc:>7} "
                   f"{len(mv.metrics.get('history', [])):>6} {enc:<12} {m['pooling']:<9} {mv.prep_id}")


def show_cmd(version: str = typer.Argument("champion", help="a version name, or `champion`"),
             as_json: bool = typer.Option(False, "--json", help="print config + metrics as JSON"),
             warehouse: WarehouseOption = None) -> None:
    """Config, final metrics and the per-epoch history of one version."""
    from pipeline import registry

    wh = warehouse_from(warehouse, reads=("models",))
    mv = registry.get(wh, version)
    if as_json:
        typer.echo(json.dumps({"version": mv.version, "config": mv.config, "metrics": mv.metrics}, indent=2))
        return
    echo_kv(mv.version + ("  (champion)" if registry.champion(wh) == mv.version else ""), _facts(mv))
    typer.echo("  epoch  train_loss  val_loss  val_acc  seconds  tokens/s")
    for r in mv.metrics.get("history", []):
        typer.echo(f"  {r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>8.4f}  {r['val_accuracy']:>7.4f}"
                   f"  {r['seconds']:>7.1f}  {r['tokens_per_s']:>8.0f}")


def _facts(mv) -> dict:
    """What `models show` lists about a version, one line each: where it is, what it is, how it did."""
    f = mv.metrics.get("final", {})
    return {
        "path": mv.path, "preset": mv.config.get("preset"), "prep_id": mv.prep_id,
        "model": json.dumps(mv.config["model"], sort_keys=True),
        "val accuracy": f.get("val_accuracy"), "val loss": f.get("val_loss"), "val F1": f.get("val_f1"),
        "confusion [[tn,fp],[fn,tp]]": f.get("val_confusion"), "params": f.get("params"),
        "temperature (<= 40 tokens)": f"{f['temperature']:.4f} ({f.get('temperature_short', f['temperature']):.4f})"
        if f.get("temperature") is not None else "1 (not calibrated)",
        "val ECE before -> after": f"{f['val_ece_before']:.4f} -> {f['val_ece_after']:.4f}"
        if f.get("val_ece_after") is not None else None,
        "val accuracy, short texts": f.get("val_accuracy_short"),
        "coverage rule": json.dumps(mv.config.get("coverage")) if mv.config.get("coverage") else "default",
        "stopped": mv.metrics.get("stopped"), "seconds": mv.metrics.get("seconds"),
        "device": mv.metrics.get("device")}


def verify_cmd(version: str = typer.Argument("champion", help="a version, alias, or `champion`"),
               warehouse: WarehouseOption = None) -> None:
    """Check VERSION the way every pointer move does: a real folder, every registered file (weights, vocabulary,
    manifest, eval set) against the SHA-256 recorded at registration, config.json and metrics.json. Exit 2
    with one line naming the file when it fails."""
    from pipeline import registry

    wh = warehouse_from(warehouse, reads=("models",))
    mv = registry.verify_version(wh, registry.get(wh, version).version)
    typer.echo(f"{mv.version}: verified ({len(mv.config.get('checksums') or {})} files match their SHA-256)")
