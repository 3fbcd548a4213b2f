"""The console commands: declared in pyproject.toml, each one the `python -m harness.X` it names, and
bash completion for the commands that compose a config, exercised the way bash runs it."""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import CONFIG_DIR

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 skips these tests

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS = ("train", "report", "inspect", "plan", "evaluate", "prepare", "bench")


def entry_point(name: str):
    module, _, function = SCRIPTS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_command_is_declared_and_importable():
    assert set(SCRIPTS) == {f"ablate-{c}" for c in COMMANDS}
    for name in SCRIPTS:
        assert callable(entry_point(name)), name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_answers_help_as_its_module_does(command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"ablate-{command}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        entry_point(f"ablate-{command}")()
    assert exit_info.value.code in (0, None)
    assert "harness." in capsys.readouterr().out  # the help names the module it runs


def test_a_command_exits_with_its_modules_status(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ablate-inspect", "model=d13"])
    with pytest.raises(SystemExit) as exit_info:
        entry_point("ablate-inspect")()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: model=d13 is not an option")
    monkeypatch.setattr(sys, "argv", ["ablate-plan", "model=tiny,d12"])
    with pytest.raises(SystemExit) as exit_info:
        entry_point("ablate-plan")()
    assert exit_info.value.code == 0
    assert "Total: 2 runs" in capsys.readouterr().out


def command_on_path(bin_dir: Path, command: str) -> None:
    """What pip writes for a console script: an executable that calls the entry point."""
    module, _, function = SCRIPTS[f"ablate-{command}"].partition(":")
    script = bin_dir / f"ablate-{command}"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    script.chmod(0o755)


def bash_complete(bin_dir: Path, lines: list[str]) -> list[list[str]]:
    """Install Hydra's completion script for each line's command, then complete each line at its end
    as bash does on TAB: COMP_LINE, COMP_POINT, COMP_WORDS, COMP_CWORD, and the COMPREPLY it leaves."""
    script = [f'eval "$({c} -sc install=bash)"' for c in sorted({line.split()[0] for line in lines})]
    for line in lines:
        words = line.split() + ([""] if line.endswith(" ") else [])
        script += [
            f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({' '.join(repr(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            "hydra_bash_completion",
            "printf '%s\\n' \"${COMPREPLY[@]}\" '--'",
        ]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=env, cwd=bin_dir)
    assert result.returncode == 0, result.stderr
    replies = result.stdout.split("--\n")[:-1]
    return [sorted(w for w in reply.splitlines() if w) for reply in replies]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_a_group_with_its_options(tmp_path):
    for command in ("train", "inspect", "bench"):
        command_on_path(tmp_path, command)
    lines = [
        "ablate-train mlp_lr=",
        "ablate-train -m experiment=smoke rope=",
        # the argparse commands that take overrides complete them too, past their flags and subcommand
        "ablate-inspect model=d12 mlp_lr=c_",
        "ablate-bench throughput --steps 3 optim.muon.l",
    ]
    assert bash_complete(tmp_path, lines) == [
        [f"mlp_lr={o}" for o in options("mlp_lr")],
        [f"rope={o}" for o in options("rope")],
        ["mlp_lr=c_fc_2x", "mlp_lr=c_proj_2x"],
        ["optim.muon.lr="],
    ]


def test_the_installed_commands_run_when_this_environment_has_them():
    """On a fresh `pip install -e '.[dev]'` (make test) the scripts sit beside the interpreter."""
    bin_dir = Path(sys.executable).parent
    installed = [c for c in COMMANDS if (bin_dir / f"ablate-{c}").exists()]
    if not installed:
        pytest.skip(f"no ablate-* commands in {bin_dir} (not installed from this checkout)")
    assert installed == list(COMMANDS)
    result = subprocess.run([bin_dir / "ablate-train", "-sc", "install=bash"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("-F hydra_bash_completion ablate-train")
    result = subprocess.run([bin_dir / "ablate-inspect", "model=tiny"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "parameter counts:" in result.stdout
