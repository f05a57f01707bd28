"""Every figure draws from synthetic runs and is written as PNG and PDF; empty input is skipped."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from test_results import write_synthetic_runs
from vitprune.study import kept_tokens, plot_kit, plots, results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_runs(root)
    return results.collect_runs(root, "fmnist")


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_each_figure_saves_png_and_pdf(runs, tmp_path, name):
    fig = plots.FIGURES[name](runs)
    assert isinstance(fig, Figure)
    paths = plots.save(fig, tmp_path, name)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    with Image.open(paths[0]) as img:
        assert img.size[0] > 300 and img.size[1] > 200
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("name", sorted(set(plots.FIGURES) - {"reported_in_one_unit"}))
def test_nothing_to_draw_gives_none(name):
    assert plots.FIGURES[name]([]) is None


def test_reported_rows_in_one_unit():
    """EfficientFormer's printed (doubled) positions are hollow; filled ones are in GMACs."""
    fig = plots.reported_in_one_unit([])
    filled = np.concatenate([c.get_offsets() for c in fig.axes[0].collections
                             if len(c.get_offsets()) > 1])
    assert {(round(x, 2), y) for x, y in filled} >= {(1.3, 79.2), (3.9, 82.4), (10.2, 83.3), (17.6, 81.8)}
    assert not any(x > 18 for x, _ in filled)  # 20.4 (L7 as printed) only as a hollow marker


def test_make_all_skips_missing_data_and_removes_stale_files(runs, tmp_path):
    (tmp_path / "speedup_vs_mac_ratio.png").write_bytes(b"old")
    no_speed = [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "speedup"}} for r in runs]
    drawn = plots.make_all(no_speed, tmp_path)
    assert "speedup_vs_mac_ratio" not in drawn and set(drawn) == set(plots.FIGURES) - {"speedup_vs_mac_ratio"}
    assert not (tmp_path / "speedup_vs_mac_ratio.png").exists()
    assert all((tmp_path / f"{n}.pdf").exists() for n in drawn)


def test_pareto_front():
    pts = [(10, 80.0), (5, 70.0), (7, 69.0), (12, 79.0), (5, 72.0), (20, 90.0)]
    assert plot_kit.pareto_front(pts) == [4, 0, 5]


def test_accuracy_vs_macs_plots_every_measured_point(runs):
    fig = plots.accuracy_vs_macs(runs)
    ax = fig.axes[0]
    n_points = sum(len(c.get_offsets()) for c in ax.collections)
    assert n_points == len(runs)
    frontier = [line for line in ax.get_lines() if line.get_label() == "Pareto frontier"][0]
    ys = list(frontier.get_ydata())
    assert max(ys) == max(r["metrics"]["top1"] for r in runs)  # the baseline is on it
    assert ys == sorted(ys)  # more compute buys accuracy along the frontier


def test_kept_tokens_grid_greys_dropped_patches():
    image = np.ones((28, 28), dtype=np.float32)
    image[0, 0] = 0.0  # a non-constant image
    mask = np.zeros(49, dtype=bool)
    mask[0] = True  # keep only the top-left 4x4 patch
    out = kept_tokens._masked(image, mask)
    assert out.shape == (28, 28, 3)
    assert np.allclose(out[2, 2], 1.0) and not np.allclose(out[10, 10], 1.0)


def test_layer_widths_relative_to_baseline(runs):
    fig = plots.layer_widths(runs)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:4] == [0.5, 0.75, 0.0, 0.5]  # heads kept / 4 per block


def test_training_curves_draw_each_configuration_once_from_its_steps():
    def run(name, seed, trace, control=False):
        return {"run": name + f"__seed_{seed}", "metrics": {"label": name, "method": "dynamicvit", "seed": seed,
                                                           "control": control, "history": [{"epoch": 1, "trace": trace}]}}
    trace = [[10, 2.0, 1e-3], [20, 1.5, 9e-4], [30, 1.2, 5e-4]]
    runs = [run("02_token_pruning/base_rate_0.7", 0, trace), run("02_token_pruning/base_rate_0.7", 1, trace),
            run("02_token_pruning/control", 0, trace, control=True),
            {"run": "01_deit_baseline", "metrics": {"label": "base", "history": [{"epoch": 1, "train_loss": 1.0}]}}]
    lines = {line.get_label(): line for line in plots.training_curves(runs).axes[0].get_lines()}
    assert sorted(lines) == ["02_token_pruning/base_rate_0.7", "02_token_pruning/control"]
    assert list(lines["02_token_pruning/base_rate_0.7"].get_xdata()) == [10, 20, 30]
    assert lines["02_token_pruning/control"].get_linestyle() == "--"


def test_rate_sweep_keeps_schedules_apart(runs):
    extra = {"run": "02_token_pruning/base_rate_0.4__schedule_linear", "run_dir": "/nonexistent",
             "metrics": {"method": "dynamicvit", "base_rate": 0.4, "schedule": "linear", "top1": 60.0, "macs": 9e6}}
    fig = plots.rate_sweep(runs + [extra])
    labels = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()}
    assert labels["DynamicViT"] == [0.5, 0.7, 0.9]
    assert labels["DynamicViT, linear"] == [0.4]
