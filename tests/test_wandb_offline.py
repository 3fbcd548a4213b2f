"""`harness.report --wandb` without a login or a network: one line and exit code 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import report

REPO = Path(__file__).resolve().parents[1]


def test_without_a_login_the_report_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # a home without ~/.netrc or wandb settings: nobody is logged in
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb"), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "harness.report", "--wandb", "me/ablate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --wandb me/ablate: cannot read the project (UsageError: ")
    assert "wandb login" in result.stderr


def test_without_a_network_the_report_says_so_in_one_line(capsys, tmp_path):
    wandb_errors = pytest.importorskip("wandb.errors")

    class Offline:
        """wandb's API where the server cannot be reached, as wandb reports it."""

        def runs(self, project):
            raise wandb_errors.CommError("Failed to execute API request: the service did not respond\nmore detail")

    from harness.results import wandb_import

    original = wandb_import._default_api
    wandb_import._default_api = Offline
    try:
        code = report.main(["--wandb", "me/ablate", "--out", str(tmp_path / "out")])
    finally:
        wandb_import._default_api = original
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --wandb me/ablate: cannot read the project (CommError: Failed to execute API request: the service "
        "did not respond); it needs network and a wandb login (`wandb login` or WANDB_API_KEY)\n"
    )
