"""`validate_name` is a user error (issue #10: it raised a bare ValueError, a raw traceback inside flows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, ReviewflowError

BAD_NAMES = ["../etc", "", "a/b", ".hidden", "x" * 65, "semi;colon", "spa ce", "ünï"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_input_errors_naming_the_value(name, tmp_path):
    with pytest.raises(InputError, match="invalid dataset name") as err:
        Warehouse(tmp_path).dataset_dir(name)
    assert isinstance(err.value, ReviewflowError) and repr(name) in str(err.value)
    assert not list(tmp_path.iterdir())


def test_good_names_pass():
    assert validate_name("IMDb_2026-v1.2") == "IMDb_2026-v1.2"


@pytest.mark.subprocess
def test_a_bad_dataset_name_through_the_cli_is_one_line_exit_2(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text("text,label\ngood film,1\n")
    run = subprocess.run([str(Path(sys.executable).with_name("reviewflow")), "ingest", str(src), "--dataset", "../x",
                          "--no-prefect", "--warehouse", str(tmp_path / "wh")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: invalid dataset name '../x'")
