"""Issue 27 item 2: docs/ablate-your-idea.md walks a real idea, its commands work at the tiny size, and
its table covers every flag of nanochat's scripts/base_train.py (348fbb3) with a key that exists."""

import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from harness.cli import compose
from harness.results.collect import flatten

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "ablate-your-idea.md"
# Every parser.add_argument of nanochat 348fbb3's scripts/base_train.py, in its order.
BASE_TRAIN_FLAGS = (
    "--run --device-type --depth --aspect-ratio --head-dim --max-seq-len --window-pattern --num-iterations "
    "--target-flops --target-param-data-ratio --device-batch-size --total-batch-size --embedding-lr "
    "--unembedding-lr --weight-decay --matrix-lr --scalar-lr --adam-beta1 --adam-beta2 --warmup-ratio "
    "--warmdown-ratio --final-lr-frac --resume-from-step --eval-every --eval-tokens --core-metric-every "
    "--core-metric-max-per-task --sample-every --save-every --model-tag"
).split()


def flag_table() -> dict[str, str]:
    rows = {}
    for line in GUIDE.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`--"):
            for flag in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
                rows[flag] = cells[1]
    return rows


def test_the_readme_links_the_guide():
    assert "(docs/ablate-your-idea.md)" in (REPO / "README.md").read_text()


def test_every_base_train_flag_maps_to_a_key_that_exists():
    table = flag_table()
    assert sorted(table) == sorted(BASE_TRAIN_FLAGS)
    keys = set(flatten(OmegaConf.to_container(compose([]), resolve=True)))
    for flag, cell in table.items():
        named = [k for k in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)", cell)]
        assert all(k in keys for k in named), (flag, named)
    assert len([f for f, cell in table.items() if re.search(r"`[a-z_]+\.[a-z_]", cell)]) >= 24


def test_the_guides_experiment_plans_four_runs_with_its_declared_baseline():
    cfg = compose(["experiment=qk_scale"])
    assert list(cfg.stats.baseline) == ["model.qk_scale=1.0"] and cfg.model.depth == 4
    result = subprocess.run([sys.executable, "-m", "harness.plan", "experiment=qk_scale"], capture_output=True,
                            text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\| \d+ \| `(model\.qk_scale=1\.[02] seed=[01])` \|", result.stdout, flags=re.M)
    assert sorted(rows) == [f"model.qk_scale={v} seed={s}" for v in ("1.0", "1.2") for s in (0, 1)]


def test_the_guides_config_check_shows_the_new_value():
    result = subprocess.run([sys.executable, "-m", "harness.train", "experiment=smoke", "model.qk_scale=1.2",
                             "--cfg", "job"], capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "  qk_scale: 1.2\n" in result.stdout
