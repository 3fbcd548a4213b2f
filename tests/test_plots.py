"""Plots: the right panels and lines, nothing drawn over anything else, files written."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from harness.results import plots
from harness.results.collect import collect_dirs
from harness.results.plots import (
    INCOMPLETE_STYLE,
    all_plots,
    core_figure,
    curve_figure,
    difference_curve_figure,
    ema,
    final_figure,
    ordered_variants,
    save_figure,
    scaling_figure,
    throughput_figure,
)
from harness.results.rundir import RunDir

VARIANTS = (("slice", "c_fc_2x"), ("chunk", "c_fc_2x"), ("slice", "none"))


def write_run(root, depth, rope, mlp, seed, status="completed", core=False, steps=20):
    run = RunDir(root / f"model=d{depth},mlp_lr={mlp},rope={rope},seed={seed}")
    run.write_config({"seed": seed, "model": {"depth": depth}, "rope": {"split": rope}, "mlp_lr": {"name": mlp}})
    offset = 0.01 * seed + (0.02 if mlp == "none" else 0.0)
    last = steps if status == "completed" else steps // 2
    speed = 1e4 / depth * (1.05 if rope == "chunk" else 1.0) + seed
    for step in range(last + 1):
        base = {"step": step, "tokens": 1000 * step, "flops": 1e9 * depth * step, "time_s": 0.1 * step}
        if step:
            run.append_metrics({**base, "train_loss": 6.0 / (1 + step) + 2 + offset, "tok_per_s": speed})
        if step % 5 == 0:
            run.append_metrics({**base, "val_bpb": 2.0 / (1 + step) + 1 + offset})
    summary = {
        "status": status,
        "final_val_bpb": 1 + offset + 2.0 / (1 + steps),
        "tok_per_s": speed,
        "flops": 1e9 * depth * steps,
        "mfu": 0.4,
    }
    if core:
        summary.update(core=0.2 - offset, core_tasks={"arc_easy": 0.3 - offset, "piqa": 0.1 - offset})
    run.write_summary(summary)


@pytest.fixture(scope="module")
def two_depths(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    for depth in (12, 24):
        for rope, mlp in VARIANTS:
            for seed in (0, 1):
                write_run(tmp_path, depth, rope, mlp, seed, core=True)
    write_run(tmp_path, 12, "slice", "none", 2, status="interrupted")
    return collect_dirs(tmp_path)


@pytest.fixture(scope="module")
def one_depth(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("one_depth")
    for rope, mlp in VARIANTS:
        for seed in (0, 1):
            write_run(tmp_path, 12, rope, mlp, seed)
    return collect_dirs(tmp_path)


BASELINES = {12: "rope.split=slice mlp_lr.name=c_fc_2x", 24: "rope.split=slice mlp_lr.name=c_fc_2x"}


def test_ema_survives_a_nan():
    import math

    smoothed = ema([1.0, float("nan"), 3.0])
    assert smoothed[0] == pytest.approx(1.0) and math.isnan(smoothed[1])
    # the NaN is skipped: the second finite value is the second step of the EMA
    assert smoothed[2] == pytest.approx((0.9 * 0.1 * 1.0 + 0.1 * 3.0) / (1 - 0.9**2))


def test_ema_is_debiased_with_beta_point_nine():
    assert ema([1.0, 2.0]).tolist() == pytest.approx([1.0, (0.09 + 0.2) / (1 - 0.81)])
    assert ema([3.0] * 5).tolist() == pytest.approx([3.0] * 5)


def test_curves_have_a_whole_and_a_zoom_panel_per_depth_with_one_line_per_variant(two_depths):
    fig = curve_figure(two_depths, "val_bpb", "step", BASELINES)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "depth 12: whole run",
        "depth 24: whole run",
        "depth 12: second half of training (zoom)",
        "depth 24: second half of training (zoom)",
    ]
    depth12 = [axes[0], axes[2]]
    for ax in depth12:
        solid = [line for line in ax.get_lines() if line.get_linestyle() != INCOMPLETE_STYLE]
        dotted = [line for line in ax.get_lines() if line.get_linestyle() == INCOMPLETE_STYLE]
        assert len(solid) == len(VARIANTS) and len(dotted) == 1  # the interrupted run, on its own
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == len(VARIANTS)  # seed bands
    assert all(len(ax.get_lines()) == len(VARIANTS) for ax in (axes[1], axes[3]))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "slice · c_fc_2x (baseline)" in labels and "run not completed" in labels
    assert "optimizer step" in axes[0].get_xlabel() and "bits per byte" in axes[0].get_ylabel()
    zoom = axes[2].get_xlim()
    assert zoom[0] > 8 and zoom[1] > 19  # the second half of 20 steps


def test_train_loss_is_smoothed_and_says_so(two_depths):
    fig = curve_figure(two_depths, "train_loss", "time_s", BASELINES)
    assert "EMA 0.9" in fig.axes[0].get_ylabel()
    assert fig.axes[0].get_xlabel() == "training time, evaluation excluded (s)"
    mean = fig.axes[0].get_lines()[0].get_ydata()
    raw_first = 6.0 / 2 + 2 + 0.005  # the first logged loss, mean of seeds 0 and 1
    assert mean[0] == pytest.approx(raw_first)  # debiased EMA starts at the first value


@pytest.mark.parametrize(
    "make",
    [
        lambda c: curve_figure(c, "train_loss", "tokens", BASELINES),
        lambda c: final_figure(c, BASELINES),
        lambda c: scaling_figure(c, BASELINES),
        lambda c: core_figure(c, BASELINES),
        lambda c: throughput_figure(c, BASELINES),
        lambda c: difference_curve_figure(c, BASELINES),
    ],
    ids=["curves", "final", "scaling", "core", "throughput", "difference"],
)
@pytest.mark.parametrize("sweep", ["one_depth", "two_depths"])
def test_nothing_overlaps(request, sweep, make):
    fig = make(request.getfixturevalue(sweep))
    if fig is None:
        assert sweep == "one_depth"  # no scaling view, no CORE
        return
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    # Each panel with its tick labels, axis labels and title; colorbars belong to their panel's space.
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    for legend in fig.legends:
        assert not any(legend.get_window_extent(renderer).overlaps(b) for b in boxes)
    page = fig.bbox
    for text in fig.texts:  # the suptitle fits on the page, clear of the legend
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1, text.get_text()
        assert not any(legend.get_window_extent(renderer).overlaps(box) for legend in fig.legends), text.get_text()
    for ax in fig.axes:  # annotations stay on the page (the panel boxes above include them)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1, text.get_text()


def test_throughput_labels_sit_beside_the_panel_not_on_the_data(two_depths):
    fig = throughput_figure(two_depths, BASELINES)
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    for ax in fig.axes[1::2]:  # the relative-difference panel of each depth carries the value column
        frame = ax.get_window_extent(renderer)
        assert ax.texts
        for text in ax.texts:
            assert text.get_window_extent(renderer).x0 >= frame.x1, text.get_text()


def test_scaling_needs_two_depths_and_core_needs_core(two_depths, tmp_path):
    fig = scaling_figure(two_depths, BASELINES)
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"
    assert all(len(ax.get_lines()) >= len(VARIANTS) for ax in fig.axes)
    # Each variant's line passes through the true depths (not the error bars' sideways positions).
    for line in (ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() not in ("None", "none", "")):
        assert sorted(set(line.get_xdata())) == sorted(set(two_depths.completed()["depth"]))
    core = core_figure(two_depths, BASELINES)
    images = [ax for ax in core.axes if ax.images]
    assert len(images) == 4  # per depth: centered accuracy and difference to the baseline
    assert [t.get_text() for t in images[0].get_xticklabels()] == ["CORE", "arc_easy", "piqa"]
    delta_texts = [t.get_text() for t in images[1].texts]
    assert all("±" in t for t in delta_texts if not t.startswith("+0.000"))  # each difference with its spread

    one_depth = tmp_path / "one"
    for rope, mlp in VARIANTS:
        write_run(one_depth, 12, rope, mlp, 0)
    collection = collect_dirs(one_depth)
    assert scaling_figure(collection) is None
    assert core_figure(collection) is None
    # Here steps, time and FLOPs are each one multiple of tokens (write_run): one picture, drawn once.
    assert {p.stem for p in all_plots(collection)} == {
        *(f"{m}_vs_tokens" for m in ("train_loss", "val_bpb")),
        "final_val_bpb",
        "throughput",
    }


def test_final_and_throughput_show_every_variant(two_depths):
    for fig in (final_figure(two_depths, BASELINES), throughput_figure(two_depths, BASELINES)):
        assert len(fig.axes) == 4  # per depth: the values, and the difference to the baseline
        assert len(fig.axes[0].get_yticklabels()) == len(VARIANTS)
    texts = [t.get_text() for t in throughput_figure(two_depths, BASELINES).axes[1].texts]
    assert any("vs baseline" in t and "MFU 40.0%" in t for t in texts)


def _whiskers(ax):
    """(low, high) of every horizontal error bar of a panel, by its row (y)."""
    bars = {}
    for collection in ax.collections:
        for segment in getattr(collection, "get_segments", lambda: [])():
            (x0, y0), (x1, y1) = segment
            if y0 == y1:
                bars[round(y0)] = (min(x0, x1), max(x0, x1))
    return bars


def _finals(root, finals: dict) -> None:
    for rope, values in finals.items():
        for seed, (final, speed) in enumerate(values):
            run = RunDir(root / f"rope={rope},seed={seed}")
            run.write_config({"seed": seed, "model": {"depth": 12}, "rope": {"split": rope}, "mlp_lr": {"name": "x"}})
            run.write_summary({"status": "completed", "final_val_bpb": final, "tok_per_s": speed})


def test_the_final_plot_shows_the_paired_difference_with_its_interval(tmp_path):
    import numpy as np
    from scipy import stats

    base, chunk = [0.850, 0.861, 0.853], [0.852, 0.864, 0.856]
    _finals(tmp_path, {"slice": [(x, 1000.0) for x in base], "chunk": [(x, 1000.0) for x in chunk]})
    fig = final_figure(collect_dirs(tmp_path), {12: "rope.split=slice"})
    values_ax, delta_ax = fig.axes
    ci = stats.ttest_rel(chunk, base).confidence_interval(0.95)
    assert _whiskers(delta_ax)[1] == pytest.approx((ci.low, ci.high))  # the baseline's row first, then chunk
    # The unpaired interval of each variant is far wider than the paired one.
    half = stats.t.ppf(0.975, 2) * np.std(chunk, ddof=1) / np.sqrt(3)
    assert _whiskers(values_ax)[1] == pytest.approx((np.mean(chunk) - half, np.mean(chunk) + half))
    assert half > (ci.high - ci.low) / 2
    assert any(list(line.get_xdata()) == [0, 0] for line in delta_ax.get_lines())  # the zero line


def test_one_seed_variants_say_n_1_and_variants_differ_by_marker(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path, 12, "slice", "c_fc_2x", seed)
        write_run(tmp_path, 12, "slice", "none", seed)
    write_run(tmp_path, 12, "chunk", "c_fc_2x", 0)
    collection = collect_dirs(tmp_path)
    from harness.results.plots import variant_styles

    markers = [style.marker for style in variant_styles(collection, BASELINES).values()]
    assert len(set(markers)) == len(markers) == 3
    for fig in (final_figure(collection, BASELINES), throughput_figure(collection, BASELINES)):
        labels = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert labels.count("n=1") == 2  # the values panel and the difference panel
        order = ordered_variants(collection.runs["variant"].unique(), BASELINES)  # the baseline's row first
        single_row = order.index("rope.split=chunk mlp_lr.name=c_fc_2x")
        assert all(single_row not in _whiskers(ax) for ax in fig.axes)  # no zero-length bar


def test_throughput_shows_the_relative_difference_with_fieller_bounds_off_zero(tmp_path):
    import numpy as np
    from scipy import stats

    speeds = {"slice": [1000.0, 990.0, 1012.0], "chunk": [1031.0, 1019.0, 1043.0]}
    _finals(tmp_path, {rope: [(1.0 + i / 100, x) for i, x in enumerate(v)] for rope, v in speeds.items()})
    fig = throughput_figure(collect_dirs(tmp_path), {12: "rope.split=slice"})
    values_ax, delta_ax = fig.axes
    assert values_ax.get_xlim()[0] > 900  # fitted to the data, not from 0
    low, high = _whiskers(delta_ax)[1]  # the baseline's row first, then chunk
    v, b = np.array(speeds["chunk"]), np.array(speeds["slice"])
    for bound in (low, high):  # Fieller's bounds: scipy's paired test of v against rho * b has p = 0.05
        assert stats.ttest_rel(v, (1 + bound / 100) * b).pvalue == pytest.approx(0.05, abs=1e-8)
    assert 0 < low < high  # clearly faster: the whole interval right of the zero line


def test_figures_are_saved_as_png_and_svg(two_depths, tmp_path):
    png, svg = save_figure(curve_figure(two_depths, "train_loss", "tokens", BASELINES), tmp_path, "curve")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()[:500]


# issue 27: plots that answer the question ---------------------------------------------------
def _curve_runs(root, variants: dict, seconds_per_step: dict | None = None) -> None:
    """Runs with given val bpb at steps 0, 5, 10, 15, 20 per (variant, seed)."""
    for (rope, seed), values in variants.items():
        run = RunDir(root / f"rope={rope},seed={seed}")
        run.write_config({"seed": seed, "model": {"depth": 12}, "rope": {"split": rope}, "mlp_lr": {"name": "x"}})
        per_step = (seconds_per_step or {}).get(rope, 0.1)
        for i, value in enumerate(values):
            step = 5 * i
            base = {"step": step, "tokens": 1000 * step, "flops": 1e9 * step, "time_s": per_step * step}
            run.append_metrics({**base, "val_bpb": value})
        run.write_summary({"status": "completed", "final_val_bpb": values[-1], "tok_per_s": 1000.0})


def test_the_difference_over_training_is_paired_by_seed_with_a_t_band(tmp_path):
    import numpy as np
    from scipy import stats

    from harness.results.plots import difference_curve_figure

    base = {0: [3.0, 2.0, 1.5, 1.2, 1.0], 1: [3.1, 2.1, 1.6, 1.3, 1.1], 2: [2.9, 1.9, 1.4, 1.1, 0.9]}
    chunk = {0: [3.0, 2.01, 1.52, 1.23, 1.02], 1: [3.1, 2.12, 1.61, 1.33, 1.13], 2: [2.9, 1.905, 1.43, 1.12, 0.93]}
    _curve_runs(tmp_path, {**{("slice", s): v for s, v in base.items()}, **{("chunk", s): v for s, v in chunk.items()}})
    fig = difference_curve_figure(collect_dirs(tmp_path), {12: "rope.split=slice"})
    ax = fig.axes[0]
    differences = np.array([np.subtract(chunk[s], base[s]) for s in (0, 1, 2)])  # by hand, per seed
    mean_line = [line for line in ax.get_lines() if len(line.get_xdata()) == 5][0]
    assert list(mean_line.get_xdata()) == [0, 5000, 10000, 15000, 20000]
    assert mean_line.get_ydata() == pytest.approx(differences.mean(axis=0))
    band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
    half = stats.t.ppf(0.975, 2) * differences.std(axis=0, ddof=1) / np.sqrt(3)
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx((differences.mean(axis=0) + half).max())
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())  # the baseline's zero line
    assert difference_curve_figure(collect_dirs(tmp_path), {}) is None  # no baseline, no difference


def test_the_time_zoom_shows_a_baseline_that_finished_sooner(tmp_path):
    values = [3.0, 2.0, 1.5, 1.2, 1.0]
    runs = {(rope, s): [v + 0.01 * s for v in values] for rope in ("slice", "chunk") for s in (0, 1)}
    _curve_runs(tmp_path, runs, seconds_per_step={"slice": 0.02, "chunk": 0.1})  # baseline 5x faster
    fig = curve_figure(collect_dirs(tmp_path), "val_bpb", "time_s", {12: "rope.split=slice"})
    zoom = fig.axes[1]
    # The baseline ran 0 .. 0.4 s; the zoom must start no later than its halfway point (0.2 s).
    assert zoom.get_xlim()[0] <= 0.2
    assert all(ax.get_xlim()[0] >= 0 and ax.get_ylim()[0] >= 0 for ax in fig.axes)  # time and bpb are >= 0


def test_twelve_variants_have_twelve_colours_and_markers_with_the_baseline_first(tmp_path):
    from harness.results.plots import variant_styles

    names = [f"r{i:02d}" for i in range(12)]
    for name in names:
        write_run(tmp_path, 12, name, "c_fc_2x", 0)
    collection = collect_dirs(tmp_path)
    baseline = {12: "rope.split=r07"}
    styles = variant_styles(collection, baseline)
    assert next(iter(styles)) == "rope.split=r07" and styles["rope.split=r07"].label.endswith("(baseline)")
    assert len({s.color if isinstance(s.color, str) else tuple(s.color) for s in styles.values()}) == 12
    assert len({s.marker for s in styles.values()}) == 12
    fig = final_figure(collection, baseline)
    assert fig.axes[0].get_yticklabels()[0].get_text() == "r07 (baseline)"


def test_the_plots_show_the_holm_p_the_verdicts_use(one_depth):
    from harness.results.compare import comparison_table

    table, _ = comparison_table(one_depth, {"rope.split": "slice", "mlp_lr.name": "c_fc_2x"})
    row = table[table["variant"] == "rope.split=chunk mlp_lr.name=c_fc_2x"].iloc[0]
    texts = [t.get_text() for ax in throughput_figure(one_depth, BASELINES, table).axes for t in ax.texts]
    assert any(f"Holm p={row['tok_per_s_p_adjusted']:.2g}" in t for t in texts), texts
    texts = [t.get_text() for ax in final_figure(one_depth, BASELINES, comparison=table).axes for t in ax.texts]
    assert any(f"Holm p={row['val_bpb_p_adjusted']:.2g}" in t for t in texts), texts


def test_an_unbounded_fieller_interval_is_drawn_and_written_as_unbounded(tmp_path):
    from harness.results.compare import comparison_markdown, comparison_table

    # The baseline's tok/s is not distinguishable from 0 (mean 1, sd 10 over 3 seeds): Fieller's set has no bounds.
    speeds = {"slice": [-9.0, 1.0, 11.0], "chunk": [1000.0, 1010.0, 1020.0]}
    _finals(tmp_path, {rope: [(1.0 + i / 100, x) for i, x in enumerate(v)] for rope, v in speeds.items()})
    collection = collect_dirs(tmp_path)
    fig = throughput_figure(collection, {12: "rope.split=slice"})
    assert any(t.get_text() == "unbounded" for t in fig.axes[1].texts)
    table, notes = comparison_table(collection, {"rope.split": "slice"})
    assert "[unbounded]" in comparison_markdown(table, collection.variant_keys, notes)
    assert fig.axes[0].get_xlim()[0] >= 0  # tok/s is never negative on the axis


def test_a_smoke_report_draws_each_picture_once(tmp_path):
    from harness.results.synthetic import write_sweep

    write_sweep(tmp_path / "smoke")
    from harness.results.compare import parse_baseline

    collection = collect_dirs(tmp_path / "smoke")
    baselines = {4: "rope.split=slice mlp_lr.name=c_fc_2x"}
    assert parse_baseline(None)  # the smoke sweep's PR #492 baseline
    stems = [p.stem for p in all_plots(collection, baselines)]
    # Before: 8 curve plots (2 metrics x step, tokens, time, FLOPs) + final + throughput; steps and FLOPs
    # are one multiple of tokens in every smoke run, so those curves repeated the tokens ones.
    assert stems == [
        "val_bpb_difference",
        "train_loss_vs_tokens",
        "train_loss_vs_time",
        "val_bpb_vs_tokens",
        "val_bpb_vs_time",
        "final_val_bpb",
        "throughput",
    ]


def test_long_curves_are_thinned_for_drawing_after_smoothing_over_every_point(monkeypatch):
    """Issue 26 item 11: a curve of 10,000 steps is drawn with at most MAX_PLOT_POINTS points, the
    EMA computed over all 10,000 first (the value at a kept step is the full-resolution EMA's)."""
    steps = np.arange(1, 10_001)
    losses = 5.0 + np.sin(steps / 7.0)
    frame = pd.DataFrame({"step": steps, "tokens": steps, "value": losses})
    series = plots._series({"r": frame}, "r", "train_loss", "tokens")
    assert len(series) <= plots.MAX_PLOT_POINTS and series.index[-1] == 10_000
    stride = int(series.index[1] - series.index[0])
    assert stride == 8 and all(s % stride == 0 for s in series.index[:-1])
    smooth, full = 0.0, []
    for k, loss in enumerate(losses, start=1):  # the recipe's debiased EMA, by hand
        smooth = 0.9 * smooth + 0.1 * loss
        full.append(smooth / (1 - 0.9**k))
    np.testing.assert_allclose(series["value"].to_numpy(), np.array(full)[series.index.to_numpy() - 1])
