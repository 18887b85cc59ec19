"""Tests for the radio-galaxy LeNets (gconv_ext.models.lenet) and the config-driven runs
(gconv_ext.experiments.radio, examples/radio_galaxies.py)."""
from __future__ import annotations

import csv
import subprocess
import sys
import warnings

import pytest
import torch

from gconv_ext.analysis import exact_input_sizes, layer_equivariance_errors
from gconv_ext.experiments.radio import ConfigError, config_to_ini, load_config, parse_config, summarize_seeds
from gconv_ext.models import EquivariantLeNet, VanillaLeNet, lenet, lenet_feature_size, pad_to_odd
from gconv_ext.nn import EquivarianceWarning, check_exact
from gconv_ext.train import load_checkpoint

from conftest import REPO


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)  # 151 is inexact: that is what is measured here
        yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("base,nrot", [("vanilla", 1), ("CN", 4), ("DN", 4), ("CN", 8), ("DN", 2)])
def test_shapes_at_151(base, nrot):
    model = lenet(base, nrot).eval()
    x = pad_to_odd(torch.rand(2, 1, 150, 150))
    assert x.shape == (2, 1, 151, 151) and x[..., 150, :].abs().sum() == 0 and x[..., :, 150].abs().sum() == 0
    assert model(x).shape == (2, 2)
    assert model.head[1].in_features == 16 * 36 * 36 and lenet_feature_size(151) == 36


def test_group_maps():
    model = EquivariantLeNet("D4")
    feats = model.features[:-1](torch.rand(1, 1, 151, 151))
    assert feats.shape == (1, 16, 8, 36, 36)
    assert model.features(torch.rand(1, 1, 151, 151)).shape == (1, 16, 36, 36)
    assert EquivariantLeNet("C8").features[0].disk_mask and not EquivariantLeNet("C4").features[0].disk_mask


def test_151_is_not_exact_but_150_is():
    """The paper's 151x151 input makes the first 2x2/2 pool see 149 pixels: not exact. n = 2 mod 4 is."""
    model = EquivariantLeNet("C4")
    report = check_exact(model, (1, 1, 151, 151), "C4")
    assert not report.exact and [layer.input_size for layer in report.offending] == [(149, 149)]
    # the FC head fixes the input size: check the convolutional part at the other sizes
    assert exact_input_sizes(model.features, "C4", [146, 148, 150, 151, 152, 154]) == {
        146: True, 148: False, 150: True, 151: False, 152: False, 154: True}


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_measured_equivariance_of_the_invariant_feature_map(group):
    """The 16-channel map after the group pool (features.6) transforms like an image: exactly at 150 (up to
    float rounding), with a large error at 151. (The logits are not invariant at any size: the FC head sees
    positions, as in the paper.)"""
    torch.manual_seed(0)
    exact = layer_equivariance_errors(lenet("DN" if group == "D4" else "CN", 4, input_size=150),
                                      torch.rand(1, 1, 150, 150), group, layers=["features.6"])
    inexact = layer_equivariance_errors(lenet("DN" if group == "D4" else "CN", 4, input_size=151),
                                        torch.rand(1, 1, 151, 151), group, layers=["features.6"])
    assert exact["features.6"]["relative"] < 1e-5
    assert inexact["features.6"]["relative"] > 1e-2


def test_vanilla_is_not_equivariant():
    torch.manual_seed(0)
    errs = layer_equivariance_errors(VanillaLeNet(input_size=150), torch.rand(1, 1, 150, 150), "C4",
                                     layers=["features.5"])
    assert errs["features.5"]["relative"] > 1e-2


def test_config_defaults_round_trip_and_examples():
    cfg = parse_config("[model]\nbase = DN\nnrot = 8\n")
    assert cfg.run_name == "D8" and cfg["training"]["batch_size"] == 50 and cfg["data"]["datastd"] == 0.035
    assert cfg.input_size == 151 and cfg["training"]["augment_rotation"] is True
    assert parse_config(config_to_ini(cfg)).values == cfg.values
    for name in ("frdeep_vanilla", "frdeep_c4", "frdeep_d16", "frdeep_sweep"):
        c = load_config(REPO / "examples" / "configs" / f"{name}.ini")
        assert c["training"]["epochs"] == 600 and c["training"]["lr0"] == 1e-4
    assert load_config(REPO / "examples" / "configs" / "frdeep_d16.ini").run_name == "D16"
    assert cfg.replace(model={"base": "vanilla"}).run_name == "vanilla"


@pytest.mark.parametrize("text,match", [
    ("[model]\nbsae = CN\n", r"\[model\] unknown key 'bsae'"),
    ("[modle]\nbase = CN\n", r"unknown section \[modle\]"),
    ("[model]\nbase = ZN\n", r"\[model\] base = 'ZN': expected one of vanilla, CN, DN"),
    ("[training]\nlr0 = fast\n", r"\[training\] lr0 = 'fast': expected a float"),
    ("[training]\nbatch_size = 0\n", r"\[training\] batch_size = '0': expected a value >= 1"),
    ("[training]\nimsize = 300\n", r"\[training\] imsize = '300': expected a value <= 150"),
    ("[training]\naugment_rotation = maybe\n", r"\[training\] augment_rotation = 'maybe': expected true/false"),
    ("[data]\ndataset = mnist\n", r"\[data\] dataset = 'mnist'"),
    ("base = CN\n", r"no section headers"),
])
def test_config_errors_name_the_key(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(text, "bad.ini")


def test_config_replace_validates(tmp_path):
    cfg = parse_config("")
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        cfg.replace(training={"epoch": 3})
    with pytest.raises(ConfigError, match="epochs"):
        cfg.replace(training={"epochs": 0})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.ini")


def test_cli_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[training]\nlearning_rate = 1\n")
    res = subprocess.run([sys.executable, str(REPO / "examples" / "radio_galaxies.py"), "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "[training] unknown key 'learning_rate'" in res.stderr


def test_tiny_sweep_smoke(tmp_path, shared_data_dir):
    cfg = tmp_path / "sweep.ini"
    cfg.write_text((REPO / "examples" / "configs" / "frdeep_sweep.ini").read_text().replace(
        "datadir =", f"datadir = {shared_data_dir}").replace("imsize = 150", "imsize = 46"))
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "examples" / "radio_galaxies.py"), "--config", str(cfg), "--sweep",
           "--nrots", "2,4", "--epochs", "1", "--max-train", "20", "--max-test", "10", "--out", str(out),
           "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["vanilla", "C2", "C4", "D2", "D4"]
    assert all(0.0 <= float(r["test_error"]) <= 1.0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| vanilla |" in table and "| D4 |" in table and "1 epoch(s)" in table
    assert (out / "test_error_vs_N.png").stat().st_size > 1000
    log = list(csv.DictReader(open(out / "C4" / "log.csv")))
    assert len(log) == 1 and (out / "C4" / "model.pt").is_file() and (out / "C4" / "config.ini").is_file()
    saved = load_checkpoint(out / "C4" / "model.pt")  # the engine's best checkpoint, under the configured name
    settings = saved["experiment"]["settings"]
    assert settings["model"]["base"] == "CN" and settings["training"]["imsize"] == 46
    assert saved["config"]["optimizer"] == "adam" and saved["config"]["lr_schedule"] == "plateau"
    assert {"last.pt", "summary.json"} <= {p.name for p in (out / "C4").iterdir()}
    # the same sweep again reuses every finished run; a changed configuration (2 epochs) trains again
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    assert again.stdout.count("reusing the finished run") == 5
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    more = subprocess.run(cmd[:cmd.index("--nrots")] + ["--nrots", "2", "--bases", "CN", "--epochs", "2"]
                          + cmd[cmd.index("--max-train"):], check=True, capture_output=True, text=True, timeout=60)
    assert "reusing" not in more.stdout
    assert len(list(csv.DictReader(open(out / "C2" / "log.csv")))) == 2


def test_seeds_sweep_summary(tmp_path, shared_data_dir):
    cfg = tmp_path / "sweep.ini"
    cfg.write_text((REPO / "examples" / "configs" / "frdeep_sweep.ini").read_text().replace(
        "datadir =", f"datadir = {shared_data_dir}").replace("imsize = 150", "imsize = 46"))
    out = tmp_path / "seeds"
    base = [sys.executable, str(REPO / "examples" / "radio_galaxies.py"), "--config", str(cfg), "--epochs", "1",
            "--max-train", "20", "--max-test", "10", "--threads", "1", "--out", str(out)]
    res = subprocess.run(base + ["--sweep", "--nrots", "2", "--bases", "CN", "--seeds", "0,1"],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    per_seed = {s: list(csv.DictReader(open(out / f"seed{s}" / "results.csv"))) for s in (0, 1)}
    assert all([r["name"] for r in rows] == ["vanilla", "C2"] for rows in per_seed.values())
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["name"] for r in summary] == ["vanilla", "C2"]
    for i, row in enumerate(summary):
        errs = [float(per_seed[s][i]["test_error"]) for s in (0, 1)]
        assert float(row["test_error_seed0"]) == pytest.approx(errs[0])
        assert float(row["test_error_seed1"]) == pytest.approx(errs[1])
        assert float(row["test_error"]) == pytest.approx(sum(errs) / 2, abs=1e-5)
        assert float(row["test_error_std"]) == pytest.approx(abs(errs[0] - errs[1]) / 2 ** 0.5, abs=1e-5)
    # the seeds differ (split, initialisation, augmentation): their training logs are not identical
    logs = [(out / f"seed{s}" / "C2" / "log.csv").read_text() for s in (0, 1)]
    assert logs[0] != logs[1]
    assert "2 seeds" in (out / "summary.md").read_text() and "| C2 |" in (out / "summary.md").read_text()
    assert (out / "test_error_vs_N.png").stat().st_size > 1000
    again = subprocess.run(base + ["--sweep", "--nrots", "2", "--bases", "CN", "--seeds", "0,1"],
                           capture_output=True, text=True, timeout=90, check=True)
    assert again.stdout.count("reusing the finished run") == 4
    for bad in (["--sweep", "--seeds", "0,0"], ["--seeds", "0,1"], ["--sweep", "--seeds", "0,1", "--seed", "3"],
                ["--sweep", "--seeds", "x"]):
        r = subprocess.run(base + bad, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--seeds" in r.stderr, (bad, r.stderr)


def test_summarize_seeds_checks_models():
    row = {"name": "vanilla", "base": "vanilla", "nrot": 1, "params": 10, "test_error": 0.1, "val_error": 0.2,
           "best_epoch": 3, "seconds": 1.0}
    (s,) = summarize_seeds({0: [row]})
    assert s["test_error"] == 0.1 and s["test_error_std"] == 0.0 and s["seeds"] == 1
    with pytest.raises(ValueError, match="different models"):
        summarize_seeds({0: [row], 1: [dict(row, name="C4")]})
    with pytest.raises(ValueError, match="empty"):
        summarize_seeds({})
