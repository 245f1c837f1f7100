"""`reviewflow train --help` names exactly the encoders, poolings and presets the library accepts.

The CLI writes the names out (importing pipeline/model/network.py would load torch for every `reviewflow` call),
so this test is what keeps them from going stale again (the help once listed encoders without `gridlstm`)."""

from __future__ import annotations

import click
import pytest
import typer.main

import flows.cli.train as train_cli
from flows.cli import app
from pipeline.model import network
from pipeline.train.presets import PRESETS


def _train_option(name: str) -> click.Option:
    command = typer.main.get_command(app).commands["train"]
    return next(p for p in command.params if p.name == name)


@pytest.mark.parametrize("names, library", [
    (train_cli.ENCODERS, network.ENCODERS),
    ((train_cli.NGRAM_ONLY,), (network.NGRAM_ONLY,)),
    (train_cli.POOLINGS, network.POOLINGS),
])
def test_cli_names_are_the_network_names(names, library):
    assert tuple(names) == tuple(library)


@pytest.mark.parametrize("option, names", [
    ("encoder", (*network.ENCODERS, network.NGRAM_ONLY)),
    ("pooling", network.POOLINGS),
    ("preset", tuple(PRESETS)),
])
def test_help_lists_every_accepted_name(option, names):
    words = {w.strip("(),") for w in _train_option(option).help.split()}
    missing = [n for n in names if n not in words]
    assert not missing, f"--{option} help lacks {missing}: {_train_option(option).help}"
