"""The audit's findings follow from the numbers: mocked counts steer the conclusions, pure
findings are checked against an independent computation, one real count checks the plumbing."""

import json

import pytest
import timm
import torch

from vitprune import measure
from vitprune.methods import dynamicvit
from vitprune.study import audit, table1

STUDY_DYVIT = {0.7: 11.5, 0.6: 9.9, 0.5: 8.6, 0.4: 7.4}
MEASURED = {"deit_base_patch16_224": 17.583e9, "efficientformer_l1": 1.302e9,
            "efficientformer_l3": 3.929e9, "efficientformer_l7": 10.166e9}


def fake_counts(schedule_offsets=None, model_macs=None):
    """A count_fn: plain models from `model_macs`; token-pruned DeiT-B = study value + offset."""
    calls = []
    schedule_offsets = schedule_offsets or {"geometric": 0.01, "linear": 0.3}
    model_macs = model_macs or MEASURED

    def count(spec):
        calls.append(spec)
        token = spec["dynamicvit"]
        scale = (spec["img_size"] / 224) ** 2
        if token:
            g = STUDY_DYVIT.get(token["base_rate"], 10.0) + schedule_offsets[token["schedule"]]
            return {"params": 89_400_000, "macs": int(g * 1e9 * scale)}
        return {"params": 86_600_000, "macs": int(model_macs[spec["model"]] * scale)}

    count.calls = calls
    return count


def test_scramble_matches_an_independent_count():
    def independent(n):  # label i lands at the sorted position of the string str(i)
        order = sorted(range(n), key=str)
        return sum(order[position] == position for position in range(n))

    finding = audit.scramble_finding((10, 1000))
    by_n = {r["num_classes"]: r for r in finding["rows"]}
    assert by_n[10]["aligned"] == independent(10) == 10
    assert by_n[1000]["aligned"] == independent(1000) == 12
    assert by_n[1000]["aligned_padded"] == 1000
    assert by_n[1000]["perfect_model_top1"] == pytest.approx(1.2)
    assert finding["first_scrambled_num_classes"] == 11 and independent(11) < 11
    assert "12 of 1000" in finding["text"]


def test_layer9_keep_counts():
    finding = audit.layer9_finding()
    assert finding["keep_counts"]["linear"][-1] == 0
    assert finding["keep_counts"]["geometric"][-1] == int(196 * 0.4 ** 3) == 12
    geometric_used = audit.layer9_finding({"best": "geometric", "rows": []})
    assert geometric_used["kept_at_last_stage"] == 12 and "not 0" in geometric_used["text"]
    linear_used = audit.layer9_finding({"best": "linear", "rows": []})
    assert linear_used["kept_at_last_stage"] == 0 and "only the CLS" in linear_used["text"]


def test_units_follow_the_counts():
    finding = audit.units_finding(audit.Counter(count_fn=fake_counts()))
    units = {r["model"]: r["unit"] for r in finding["rows"]}
    assert units["DeiT-Base/16 [13]"] == "GMACs" and units["EfficientFormer-L7 [16]"] == "GFLOPs"
    assert all(r["agrees_with_table"] for r in finding["rows"])
    assert finding["l7_printed_change"] == pytest.approx(20.4 - 17.6)
    assert finding["l7_change_gmacs"] == pytest.approx((10.166e9 - 17.583e9) / 1e9)
    # had EfficientFormer really needed 2.6/7.8/20.4 GMACs, the finding would say so
    doubled = {**MEASURED, "efficientformer_l1": 2.6e9, "efficientformer_l3": 7.8e9, "efficientformer_l7": 20.4e9}
    other = audit.units_finding(audit.Counter(count_fn=fake_counts(model_macs=doubled)))
    eff = [r for r in other["rows"] if r["model"].startswith("EfficientFormer")]
    assert all(r["unit"] == "GMACs" and not r["agrees_with_table"] for r in eff)


@pytest.mark.parametrize("closer", ["geometric", "linear"])
def test_schedule_finding_picks_the_schedule_that_matches(closer):
    offsets = {"geometric": 0.3, "linear": 0.3, closer: 0.01}
    finding = audit.schedule_finding(audit.Counter(count_fn=fake_counts(offsets)))
    assert finding["best"] == closer
    assert finding["summary"][closer]["matches"] == 4
    assert finding["summary"][closer]["max_abs_error"] == pytest.approx(0.01, abs=1e-6)
    assert [r["study_G"] for r in finding["rows"]] == [STUDY_DYVIT[b] for b in audit.RATES]


def test_resolution_finding_picks_the_nearest_size():
    finding = audit.resolution_finding(audit.Counter(count_fn=fake_counts({"geometric": -0.3, "linear": 0})))
    assert finding["listed_img_size"] == 384 and finding["matches_img_size"] == 224
    assert finding["sizes"][384]["deit_gmacs"] > 2.9 * finding["sizes"][224]["deit_gmacs"]


def test_counter_caches_and_survives_a_damaged_file(tmp_path):
    path = tmp_path / "counts.json"
    first = fake_counts()
    spec = audit.spec_of("efficientformer_l1")
    assert audit.Counter(path, count_fn=first)(spec)["macs"] == int(1.302e9)
    second = fake_counts()
    assert audit.Counter(path, count_fn=second)(spec)["macs"] == int(1.302e9) and not second.calls
    path.write_text("{not json")
    third = fake_counts()
    audit.Counter(path, count_fn=third)(spec)
    assert len(third.calls) == 1 and json.loads(path.read_text())


def test_run_audit_writes_every_finding(tmp_path):
    findings = audit.run_audit(tmp_path, counter=audit.Counter(count_fn=fake_counts()))
    assert [f["id"] for f in findings] == ["units", "schedule", "layer9", "resolution", "scramble"]
    assert all(f["text"] and not f.get("skipped") for f in findings)
    text = (tmp_path / "audit.md").read_text()
    assert "| EfficientFormer-L7 [16] | 20.4 |" in text and "| 1000 | 12 | 1000 | 1.2 |" in text


def test_run_audit_without_models_keeps_the_pure_findings(tmp_path):
    findings = audit.run_audit(tmp_path, measure_models=False)
    skipped = {f["id"] for f in findings if f.get("skipped")}
    assert skipped == {"units", "schedule", "resolution"}
    assert "Skipped" in (tmp_path / "audit.md").read_text()


def test_reference_rows_feed_the_audit():
    assert audit.reported("DyViT-Sub/0.4")["printed_G"] == 7.4
    assert audit.reported("EfficientFormer-L3", table1.PAPER)["printed_G"] == 3.9


def test_real_count_of_a_small_token_pruned_model(tmp_path):
    """The default counter builds the timm model, attaches token pruning and calls measure.count."""
    torch.manual_seed(0)
    counter = audit.Counter(tmp_path / "c.json")
    spec = audit.spec_of("deit_tiny_patch16_224", 224, audit.token_spec(0.5, "geometric"))
    got = counter(spec)
    model = dynamicvit.attach(timm.create_model("deit_tiny_patch16_224"), base_rate=0.5, schedule="geometric",
                                 allow_empty_stage=True)
    direct = measure.count(model)
    assert (got["macs"], got["params"]) == (direct["macs"], direct["params"])
    assert got["macs"] < counter(audit.spec_of("deit_tiny_patch16_224"))["macs"]
    counter.release()
