"""notebook.Session.reading: a run's result in words against the baseline, its control and the study."""

from vitprune.study import notebook, results


def _session(runs_root):
    params = {"runs_root": str(runs_root), "profile": "fmnist", "run_dir": str(runs_root / "x"), "seed": 0}
    return notebook.Session("02_token_pruning", params, runs_root / "x", plan=None, train_config=None)


def test_reading_compares_with_baseline_control_and_study(tmp_path):
    row = {"label": "DynamicViT ρ=0.7", "top1": 90.9, "baseline_top1": 92.14, "mac_ratio": 1.5}
    session = _session(tmp_path)
    alone = session.reading(row)
    assert "-1.24 points against the baseline (92.14 %)" in alone and "at 1/1.50 of its MACs" in alone
    assert "Its control has not run at this seed" in alone
    results.write_metrics(tmp_path / "fmnist/02_token_pruning/control__seed_0", {"top1": 91.9})
    paired = session.reading(row, study_drop=-1.7)
    assert "reached 91.90 %, so pruning costs -1.00 points" in paired and "the study reports -1.70 points" in paired
    control = session.reading({"label": "control", "top1": 91.9, "baseline_top1": 92.14, "mac_ratio": 1.0,
                               "control": True})
    assert control.endswith("with nothing pruned.") and "MACs" not in control
