"""Tests for gconv_ext.analysis: layer-wise equivariance errors, exact input sizes, the parity experiment
and learning unequivariance (Using and Abusing Equivariance)."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from gconv_ext.analysis import (LN2, ParityCNN, ParityGCNN, average_over_batches, exact_input_sizes, fit_size,
                                invariance_error, layer_equivariance_errors, learn_unequivariance,
                                summarize_parity)
from gconv_ext.nn import EquivarianceWarning

from conftest import REPO
from tolerances import F64, chain_rtol, forward_with_hooks, gamma, reduction_lengths


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save on a shared CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)  # the inexact sizes are inexact on purpose
        yield
    torch.set_num_threads(n)


def _model(group: str = "C4") -> ParityGCNN:
    torch.manual_seed(0)
    return ParityGCNN(4, group, depth=2).eval()


# Where a test's point is exact equivariance (the math), model and input are float64: at an exact size C4 / D4
# permute the terms of every sum, so f_l(g x) and g f_l(x) differ by rounding only, whose relative (Frobenius)
# size is at most chain_rtol of the model's reductions (tolerances.py; it bounds every prefix of the chain
# too): 2e-12 to 6e-12 here, where float32's 1e-3 to 3e-3 would hardly be a check.

def _rounding_rtol(model, x):
    return chain_rtol(x.dtype, reduction_lengths(model, x))


def _output_rms(model, x):
    """The rms of every named module's output on x (forward hooks)."""
    rms = {}

    def hook(name):
        def fn(_module, _args, out):
            rms.setdefault(name, out.square().mean().item() ** 0.5)  # returns None: the output is kept
        return fn

    forward_with_hooks(model, x, lambda name, _module: hook(name) if name else None)
    return rms


def test_exact_size_every_layer_is_exact():
    model, x = _model().double(), torch.rand(2, 1, 28, 28, dtype=F64)
    errs = layer_equivariance_errors(model, x, "C4")
    assert list(errs) == [f"features.{i}" for i in range(10)]  # 3 convs, 3 BN, 3 ReLU, 1 pool in order
    rtol, rms = _rounding_rtol(model, x), _output_rms(model, x)
    for name, e in errs.items():
        # l1 sums mean|d_g| <= rms(d_g) = relative_g rms(f_l(x)) over the 3 rotations (rot90 keeps the rms)
        assert e["relative"] <= rtol and e["l1"] <= 3 * rtol * rms[name], (name, e, rtol)


def test_reflections_exact_for_d4():
    model, x = _model("D4").double(), torch.rand(1, 1, 26, 26, dtype=F64)
    errs = layer_equivariance_errors(model, x, "D4")
    assert max(e["relative"] for e in errs.values()) <= _rounding_rtol(model, x)  # rounding only (see above)


def test_inexact_size_breaks_after_the_pool():
    model, x = _model().double(), torch.rand(2, 1, 27, 27, dtype=F64)
    errs = layer_equivariance_errors(model, x, "C4")
    before = [errs[f"features.{i}"]["relative"] for i in range(3)]  # lifting conv, BN, ReLU at 27 -> 25
    after = [errs[f"features.{i}"]["relative"] for i in range(3, 10)]  # pool of 25: odd, inexact
    rtol = _rounding_rtol(model, x)
    assert max(before) <= rtol  # rounding only (see above)
    # grids a pixel apart change the features by O(1) relative (~0.2 at the least here); 1e-2 and 1e3 times
    # the rounding bound separate that from rounding with room to spare
    assert min(after) > max(1e-2, 1e3 * rtol)


def test_l1_summed_and_relative_averaged_over_elements():
    model, x = _model(), torch.rand(2, 1, 27, 27)
    total = layer_equivariance_errors(model, x, "C4", layers=["features.3"])["features.3"]
    single = [layer_equivariance_errors(model, x, "C4", elements=[g], layers=["features.3"])["features.3"]
              for g in (1, 2, 3)]
    # The same forwards on the same data (bit for bit on one machine and thread count) give the same
    # per-element errors; only the Python aggregation differs: <= 3 roundings of non-negative floats on
    # each side (sum, / 3), so 2 gamma_3 relative.
    agg = 2 * gamma(3, F64)
    assert total["l1"] == pytest.approx(sum(s["l1"] for s in single), rel=agg)
    assert total["relative"] == pytest.approx(sum(s["relative"] for s in single) / 3, rel=agg)


def test_planar_maps_and_kinds():
    torch.manual_seed(0)
    cnn = ParityCNN(4, depth=1).eval().double()
    x = torch.rand(2, 1, 28, 28, dtype=F64)
    errs = layer_equivariance_errors(cnn, x, "C4")
    # a plain CNN is not equivariant: its filters are not rotation-symmetric, O(1) relative errors (~0.3 at the
    # least here), far above both 1e-3 and 1e3 times the rounding bound
    signal = max(1e-3, 1e3 * _rounding_rtol(cnn, x))
    assert len(errs) == 7 and all(e["relative"] > signal for e in errs.values())
    assert layer_equivariance_errors(cnn, x, "C4", kinds=["group"]) == {}
    # a 4-D map of a group network after GroupPool is planar and exactly equivariant: rounding only (see above)
    from gconv_ext.nn import GroupPool, LiftingConv2d
    net = nn.Sequential(LiftingConv2d(1, 3, 3, "C4"), GroupPool("max")).double()
    x = torch.rand(1, 1, 9, 9, dtype=F64)
    errs = layer_equivariance_errors(net, x, "C4")
    rtol = _rounding_rtol(net, x)
    assert errs["1"]["relative"] <= rtol and errs["0"]["relative"] <= rtol


def test_bad_arguments_are_named():
    model = _model()
    with pytest.raises(ValueError, match="nope"):
        layer_equivariance_errors(model, torch.rand(1, 1, 28, 28), "C4", layers=["nope"])
    with pytest.raises(ValueError, match="classifier"):  # explicit layer with a non-spatial output
        layer_equivariance_errors(model, torch.rand(1, 1, 28, 28), "C4", layers=["classifier"])
    with pytest.raises(ValueError, match="kinds"):
        layer_equivariance_errors(model, torch.rand(1, 1, 28, 28), "C4", kinds=["vector"])
    with pytest.raises(ValueError, match="square"):
        layer_equivariance_errors(model, torch.rand(1, 1, 28, 27), "C4")


def test_average_over_batches_and_mode_restored():
    model = _model().train()
    batches = [(torch.rand(2, 1, 27, 27), torch.zeros(2)) for _ in range(3)]
    avg = average_over_batches(model, batches, "C4", layers=["features.3"])
    each = [layer_equivariance_errors(model, b[0], "C4", layers=["features.3"])["features.3"]["l1"] for b in batches]
    # the same forwards give the same per-batch errors; the aggregations differ by <= 3 roundings of
    # non-negative floats on each side: 2 gamma_3 relative
    agg = 2 * gamma(3, F64)
    assert avg["features.3"]["l1"] == pytest.approx(sum(each) / 3, rel=agg)
    assert model.training  # measured in eval mode, mode restored
    assert average_over_batches(model, batches, "C4", layers=["features.3"], max_batches=1)["features.3"]["l1"] \
        == pytest.approx(each[0], rel=agg)


def test_invariance_error_of_logits():
    model, x = _model().double(), torch.rand(2, 1, 28, 28, dtype=F64)
    # exact size: rounding only (see above), chain_rtol times the logits' size
    atol = _rounding_rtol(model, x) * model(x).abs().max().item()
    assert invariance_error(model, x, "C4")["max_abs"] <= atol
    # inexact size: grids a pixel apart, a real change (~8e-3 relative here) far above 1e-4 and the rounding
    x = torch.rand(2, 1, 29, 29, dtype=F64)
    assert invariance_error(model, x, "C4")["relative"] > max(1e-4, 1e3 * _rounding_rtol(model, x))


def test_exact_input_sizes_paper_sizes():
    assert exact_input_sizes(_model(), "C4", range(26, 31)) == {26: True, 27: False, 28: True, 29: False, 30: True}
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1))
    assert exact_input_sizes(net, "C4", [32, 33]) == {32: False, 33: True}


def test_fit_size():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    assert torch.equal(fit_size(x, 26), x[..., 1:27, 1:27])
    assert torch.equal(fit_size(x, 27), x[..., :27, :27])
    assert torch.equal(fit_size(x, 30)[..., 1:29, 1:29], x) and fit_size(x, 30)[..., 0, :].abs().sum() == 0
    y = fit_size(x, 29)
    assert torch.equal(y[..., :28, :28], x) and y[..., 28, :].abs().sum() == 0 and y[..., :, 28].abs().sum() == 0


def test_learning_unequivariance():
    inexact = learn_unequivariance(32, steps=150)
    exact = learn_unequivariance(33, steps=150)
    assert abs(inexact[0] - LN2) < 0.1 and abs(exact[0] - LN2) < 0.1
    assert inexact[-1] < 0.5
    assert exact[-1] > 0.65 and min(exact) > LN2 - 1e-4  # exact invariance: never below ln 2


def test_learning_unequivariance_example(tmp_path):
    out = tmp_path / "uneq"
    subprocess.run([sys.executable, str(REPO / "examples" / "learning_unequivariance.py"), "--steps", "60",
                    "--out", str(out)], check=True, capture_output=True, timeout=60)
    rows = list(csv.DictReader(open(out / "losses.csv")))
    assert len(rows) == 60 and set(rows[0]) == {"step", "loss_32", "loss_33"}
    assert (out / "losses.png").stat().st_size > 1000 and "ln 2" in (out / "summary.md").read_text()


def test_parity_example_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "parity"
    subprocess.run([sys.executable, str(REPO / "examples" / "parity_mnist.py"), "--budget", "smoke", "--out",
                    str(out), "--data-dir", str(shared_data_dir)], check=True, capture_output=True, timeout=60)
    rows = list(csv.DictReader(open(out / "parity.csv")))
    assert [(r["model"], r["size"], r["exact"]) for r in rows] == [
        ("gcnn_c4", "28", "True"), ("gcnn_c4", "27", "False"), ("cnn_z2", "28", "False")]
    for r in rows:
        accs = [float(r[f"acc_{a}"]) for a in range(0, 360, 10)]
        assert math.isclose(float(r["mean_acc"]), sum(accs) / 36, abs_tol=1e-4)
    exact = rows[0]
    # exact C4 invariance: identical accuracy at 0, 90, 180, 270 degrees
    assert exact["acc_0"] == exact["acc_90"] == exact["acc_180"] == exact["acc_270"]
    assert (out / "parity.png").stat().st_size > 1000
    assert "mean acc. over 36 angles" in (out / "summary.md").read_text()
    assert (out / "seed0" / "run.json").exists() and (out / "parity_summary.csv").exists()
    # a second call reuses the finished seed (same budget) instead of training again
    again = subprocess.run([sys.executable, str(REPO / "examples" / "parity_mnist.py"), "--budget", "smoke",
                            "--out", str(out), "--data-dir", str(shared_data_dir)], check=True,
                           capture_output=True, text=True, timeout=60)
    assert "reusing the finished run" in again.stdout
    assert list(csv.DictReader(open(out / "parity.csv"))) == rows
    bad = subprocess.run([sys.executable, str(REPO / "examples" / "parity_mnist.py"), "--seeds", "0,0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def _parity_row(seed, model, size, exact, accs):
    row = {"seed": seed, "model": model, "size": size, "exact": exact,
           "mean_acc": sum(accs.values()) / len(accs)}
    row.update({f"acc_{a}": v for a, v in accs.items()})
    return row


def test_summarize_parity():
    periodic = {a: (0.9 if a % 90 == 0 else 0.6) for a in range(0, 360, 10)}
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        rows.append(_parity_row(seed, "gcnn_c4", 28, True, {a: v - shift for a, v in periodic.items()}))
        broken = dict(periodic)
        broken[90] = broken[180] = broken[270] = 0.5 - shift
        rows.append(_parity_row(seed, "gcnn_c4", 27, False, broken))
        rows.append(_parity_row(seed, "cnn_z2", 28, False, {a: 0.3 for a in periodic}))
    per_model, groups = summarize_parity(rows)
    by = {(m["model"], m["size"]): m for m in per_model}
    exact, inexact = by[("gcnn_c4", 28)], by[("gcnn_c4", 27)]
    assert exact["n"] == 2 and abs(exact["drop"]) < 1e-12 and exact["drop_std"] < 1e-12
    assert math.isclose(exact["acc_0"], 0.85) and math.isclose(exact["acc_0_std"], math.sqrt(0.005))
    assert math.isclose(inexact["right"], 0.45) and math.isclose(inexact["drop"], 0.9 - 0.45)
    assert math.isclose(groups["exact"][0], (rows[0]["mean_acc"] + rows[3]["mean_acc"]) / 2)
    assert groups["z2"] == (pytest.approx(0.3), pytest.approx(0.0), 2) and groups["inexact"][2] == 2
    with pytest.raises(ValueError, match="seed"):
        summarize_parity([{k: v for k, v in rows[0].items() if k != "seed"}])
    with pytest.raises(ValueError, match="empty"):
        summarize_parity([])
