"""benchmarks/table3.py: the variants, the resumable loop and the report (training and the
held-out evaluation are replaced by stand-ins here; the real run is in benchmarks/RESULTS.md)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def table3(monkeypatch):
    spec = importlib.util.spec_from_file_location("table3", ROOT / "benchmarks" / "table3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = {"train": [], "eval": [], "samples": []}

    def fake_train(name, data, root, steps, overrides):
        calls["train"].append((name, steps))
        (root / name / "ema").mkdir(parents=True, exist_ok=True)
        (root / name / "ema" / "weights").write_text(f"{name}-{steps}")
        return root / name / "ema"

    def fake_eval(weights, scenes, sample_steps, **kw):
        calls["eval"].append(weights.name)
        score = {"masked": 14.0, "time_dependent": 20.0, "posed_warp": 20.5, "mix20": 20.4}[weights.parent.name]
        metric = lambda v: {"mean": v, "ci95": 0.1, "n": scenes}  # noqa: E731
        return {"psnr": metric(score), "ssim": metric(0.5), "lpips": metric(0.2), "hole_psnr": metric(score - 2),
                "warp_psnr": metric(12.0)}

    def fake_samples(weights, seeds, sample_steps, batch=4):
        calls["samples"].append(f"{weights.parent.name}/{weights.name}")
        views = np.zeros((len(seeds), 4, 8, 8, 3), np.float32)
        yield views, views, np.ones(views.shape[:-1] + (1,), np.float32), views

    monkeypatch.setattr(module, "write_data", lambda root, *a: root / "data")
    monkeypatch.setattr(module, "held_out_samples", fake_samples)
    monkeypatch.setattr(module, "train_variant", fake_train)
    monkeypatch.setattr(module, "evaluate", fake_eval)
    return module, calls


def test_every_variant_trains_in_segments_then_the_report_is_written(table3, tmp_path):
    module, calls = table3
    argv = ["--out", str(tmp_path), "--steps", "9", "--segments", "3", "--devices", "1"]
    results = module.main(argv)
    assert calls["train"] == [(n, s) for n in module.VARIANTS for s in (3, 6, 9)]  # same budget, same segments
    assert set(results) == set(module.VARIANTS) and all(len(v) == 3 for v in results.values())
    report = (tmp_path / "table3.md").read_text()
    assert "| masked | 16.14 | 14.00 ± 0.10" in report and "warp only" in report
    assert (tmp_path / "table3.json").is_file()
    assert calls["samples"] == [f"{n}/ema_000009" for n in module.VARIANTS]  # the grid shows each variant's last segment
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "masked" / "ema_000006" / "weights").read_text() == "masked-6"  # each segment's EMA kept
    calls["train"].clear()
    module.main(argv)  # resumable: finished segments are not trained again
    assert calls["train"] == []
    stored = json.loads((tmp_path / "table3.json").read_text())["variants"]
    assert [s["steps"] for s in stored["posed_warp"]] == [3, 6, 9]
    calls["samples"].clear()
    module.main(["--out", str(tmp_path), "--steps", "6", "--segments", "2", "--devices", "1"])  # a shorter plan
    assert calls["train"] == [] and calls["samples"] == [f"{n}/ema_000006" for n in module.VARIANTS]
    report = (tmp_path / "table3.md").read_text()
    table = report.split("Curves")[0]
    assert " 48 |" in table and " 72 |" not in table  # the table's budget is the plan's last segment (6 steps x batch 8)
    assert len(json.loads((tmp_path / "table3.json").read_text())["variants"]["masked"]) == 3  # nothing measured is dropped


def test_bad_arguments_are_named(table3, tmp_path, capsys):
    module, _ = table3
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--variants", "posed,masked"])
    assert "posed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path), "--steps", "2", "--segments", "3"])
    assert "--segments" in capsys.readouterr().err


def test_held_out_batches_are_the_test_inputs_of_both_evaluations():
    """benchmarks/eval_small_pixel.py's held-out inputs, which table3's held_out_samples reads too:
    batches of scenes, view 0 the reference (kept as it is, mask 1), views 1-3 its warps."""
    spec = importlib.util.spec_from_file_location("eval_small_pixel", ROOT / "benchmarks" / "eval_small_pixel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    batches = list(module.held_out_batches([900_000, 900_001, 900_002], 16, batch=2))
    assert [b[0] for b in batches] == [0, 2] and [b[1].shape for b in batches] == [(2, 4, 16, 16, 3), (1, 4, 16, 16, 3)]
    start, views, warped, masks = batches[1]
    np.testing.assert_array_equal(views[0], module.held_out_views(900_002, 16)[0])  # the batch's own seed
    np.testing.assert_array_equal(np.asarray(warped)[:, 0], views[:, 0])
    masks = np.asarray(masks)
    assert masks.shape == (1, 4, 16, 16, 1) and np.all(masks[:, 0] == 1) and 0 < masks[:, 1:].mean() < 1  # holes
