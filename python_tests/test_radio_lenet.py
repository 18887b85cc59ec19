"""Tests for the radio-galaxy LeNets (gconv_ext.models.lenet) and the config-driven runs
(gconv_ext.experiments.radio, examples/radio_galaxies.py)."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import warnings

import pytest
import torch

from gconv_ext.analysis import exact_input_sizes, layer_equivariance_errors
from gconv_ext.experiments.radio import (SWEEP_GROUPS, ConfigError, config_to_ini, load_config, parse_config,
                                         run_seeds, run_sweep, summarize_seeds)
from gconv_ext.groups import Group
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


@pytest.mark.parametrize("group", ["vanilla", "C4", "D4", "C8", "D2"])
def test_shapes_at_151(group):
    model = lenet(group).eval()
    x = pad_to_odd(torch.rand(2, 1, 150, 150))
    assert x.shape == (2, 1, 151, 151) and x[..., 150, :].abs().sum() == 0 and x[..., :, 150].abs().sum() == 0
    assert model(x).shape == (2, 2)
    assert model.head[1].in_features == 16 * 36 * 36 and lenet_feature_size(151) == 36


def _structure(model):
    return type(model), {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("old,new", [
    (("CN", 4), "C4"), (("DN", 8), "D8"), (("DN", 16), "D16"), (("CN", 2), "C2")])
def test_group_names_build_the_models_of_the_deprecated_base_nrot(old, new):
    with pytest.warns(FutureWarning, match=rf"lenet\(base='{old[0]}', nrot={old[1]}\) is deprecated; "
                                           rf"use lenet\('{new}'\)"):
        legacy = lenet(*old)
    assert _structure(legacy) == _structure(lenet(new)) == _structure(lenet(Group(old[1], old[0] == "DN")))
    assert legacy.group.name == new
    with pytest.warns(FutureWarning, match=rf"use lenet\('{new}'\)"):
        assert _structure(lenet(base=old[0], nrot=old[1])) == _structure(lenet(new))
    # the former positional layout (base, nrot, in_channels, num_classes, input_size) is read as such
    with pytest.warns(FutureWarning):
        legacy = lenet(old[0], old[1], 1, 3, 150)
    assert _structure(legacy) == _structure(lenet(new, 1, 3, 150))


def test_lenet_vanilla_and_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new spelling does not warn
        assert type(lenet()) is type(lenet("vanilla")) is VanillaLeNet
        assert lenet("c4").group.name == "C4" and lenet(group="D16").group.name == "D16"
    with pytest.warns(FutureWarning, match=r"lenet\(base='vanilla'\) is deprecated; use lenet\('vanilla'\)"):
        assert _structure(lenet(base="vanilla", nrot=8)) == _structure(lenet("vanilla"))
    for bad in ("Z4", "C0", "CN4", "", 4):
        with pytest.raises(ValueError, match=r"group must be 'vanilla', a group name"):
            lenet(bad)
    with pytest.raises(ValueError, match="base must be 'vanilla', 'CN' or 'DN'"):
        lenet(base="XN", nrot=4)
    with pytest.raises(ValueError, match="nrot must be an int >= 1"):
        lenet("CN", 0)
    with pytest.raises(ValueError, match="not both"):
        lenet(group="C4", base="CN")
    with pytest.raises(ValueError, match=r"nrot goes only with the deprecated base"):
        lenet("C4", nrot=4)


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
    exact = layer_equivariance_errors(lenet(group, input_size=150),
                                      torch.rand(1, 1, 150, 150), group, layers=["features.6"])
    inexact = layer_equivariance_errors(lenet(group, input_size=151),
                                        torch.rand(1, 1, 151, 151), group, layers=["features.6"])
    assert exact["features.6"]["relative"] < 1e-5
    assert inexact["features.6"]["relative"] > 1e-2


def test_vanilla_is_not_equivariant():
    torch.manual_seed(0)
    errs = layer_equivariance_errors(VanillaLeNet(input_size=150), torch.rand(1, 1, 150, 150), "C4",
                                     layers=["features.5"])
    assert errs["features.5"]["relative"] > 1e-2


def test_config_defaults_round_trip_and_examples():
    cfg = parse_config("[model]\ngroup = D8\n")
    assert cfg.run_name == "D8" and cfg["training"]["batch_size"] == 50 and cfg["data"]["datastd"] == 0.035
    assert cfg.input_size == 151 and cfg["training"]["augment_rotation"] is True
    assert cfg["model"] == {"group": "D8"} and "group = D8" in config_to_ini(cfg)
    assert parse_config(config_to_ini(cfg)).values == cfg.values
    assert parse_config("").run_name == "vanilla" and parse_config("[model]\ngroup = c4\n").run_name == "C4"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the committed example configs use the new key
        for name in ("frdeep_vanilla", "frdeep_c4", "frdeep_d16", "frdeep_sweep"):
            c = load_config(REPO / "examples" / "configs" / f"{name}.ini")
            assert c["training"]["epochs"] == 600 and c["training"]["lr0"] == 1e-4
        assert load_config(REPO / "examples" / "configs" / "frdeep_d16.ini").run_name == "D16"
        assert load_config(REPO / "examples" / "configs" / "frdeep_c4.ini").run_name == "C4"
        assert cfg.replace(model={"group": "vanilla"}).run_name == "vanilla"
        assert cfg.replace(model={"group": Group(16, True)}).run_name == "D16"


@pytest.mark.parametrize("old,group", [
    ("base = DN\nnrot = 8\n", "D8"), ("base = CN\nnrot = 4\n", "C4"), ("base = CN\n", "C4"),
    ("base = vanilla\nnrot = 16\n", "vanilla"), ("nrot = 8\n", "vanilla"), ("base = vanilla\n", "vanilla")])
def test_deprecated_model_keys_parse_to_the_same_config(old, group):
    rest = "[training]\nepochs = 3\n"
    with pytest.warns(FutureWarning, match=rf"old\.ini: \[model\] .* is deprecated; write group = {group} instead"):
        cfg = parse_config(f"[model]\n{old}{rest}", "old.ini")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = parse_config(f"[model]\ngroup = {group}\n{rest}")
    assert cfg.values == new.values and cfg.run_name == group
    assert config_to_ini(cfg) == config_to_ini(new)  # written back with the new key only


def test_deprecated_replace_and_both_spellings():
    cfg = parse_config("[model]\ngroup = C4\n")
    with pytest.warns(FutureWarning, match=r"replace\(model=\{'base': 'DN', 'nrot': 8\}\) is deprecated; "
                                           r"use replace\(model=\{'group': 'D8'\}\)"):
        assert cfg.replace(model={"base": "DN", "nrot": 8}).values == cfg.replace(model={"group": "D8"}).values
    with pytest.warns(FutureWarning):  # a key left out keeps the current group's value
        assert cfg.replace(model={"nrot": 16}).run_name == "C16"
    with pytest.warns(FutureWarning):
        assert cfg.replace(model={"base": "vanilla"}).run_name == "vanilla"
    with pytest.warns(FutureWarning):
        assert parse_config("").replace(model={"base": "CN"}).run_name == "C4"  # the former default nrot
    with pytest.raises(ConfigError, match="not both"):
        cfg.replace(model={"group": "C8", "nrot": 8})
    with pytest.raises(ConfigError, match=r"\[model\] group = 'Z4': expected vanilla or a group name"):
        cfg.replace(model={"group": "Z4"})
    with pytest.raises(ConfigError, match=r"bad\.ini: \[model\] group and the deprecated base and nrot are both"):
        parse_config("[model]\ngroup = C4\nbase = CN\nnrot = 4\n", "bad.ini")
    with pytest.raises(ConfigError, match=r"\[model\] group and the deprecated nrot are both given"):
        parse_config("[model]\ngroup = vanilla\nnrot = 4\n", "bad.ini")


@pytest.mark.parametrize("text,match", [
    ("[model]\ngruop = C4\n", r"\[model\] unknown key 'gruop' \(known: group; deprecated: base, nrot\)"),
    ("[modle]\ngroup = C4\n", r"unknown section \[modle\]"),
    ("[model]\ngroup = Z4\n", r"bad\.ini: \[model\] group = 'Z4': expected vanilla or a group name C<N> / D<N>"),
    ("[model]\ngroup = C0\n", r"\[model\] group = 'C0': expected vanilla or a group name C<N> / D<N> with N >= 1"),
    ("[model]\ngroup = CN\n", r"\[model\] group = 'CN': expected vanilla or a group name"),
    ("[model]\nbase = ZN\n", r"\[model\] base = 'ZN': expected one of vanilla, CN, DN"),
    ("[model]\nbase = CN\nnrot = 0\n", r"\[model\] nrot = '0': expected a value >= 1"),
    ("[training]\nlr0 = fast\n", r"\[training\] lr0 = 'fast': expected a float"),
    ("[training]\nbatch_size = 0\n", r"\[training\] batch_size = '0': expected a value >= 1"),
    ("[training]\nimsize = 300\n", r"\[training\] imsize = '300': expected a value <= 150"),
    ("[training]\naugment_rotation = maybe\n", r"\[training\] augment_rotation = 'maybe': expected true/false"),
    ("[data]\ndataset = mnist\n", r"\[data\] dataset = 'mnist'"),
    ("group = C4\n", r"no section headers"),
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
           "--groups", "C2,C4,D2,D4", "--epochs", "1", "--max-train", "20", "--max-test", "10", "--out", str(out),
           "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == [r["group"] for r in rows] == ["vanilla", "C2", "C4", "D2", "D4"]
    assert [(r["base"], r["nrot"]) for r in rows] == [("vanilla", "1"), ("CN", "2"), ("CN", "4"), ("DN", "2"),
                                                      ("DN", "4")]  # the former columns, kept
    assert all(0.0 <= float(r["test_error"]) <= 1.0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| vanilla |" in table and "| D4 |" in table and "1 epoch(s)" in table
    assert (out / "test_error_vs_N.png").stat().st_size > 1000
    log = list(csv.DictReader(open(out / "C4" / "log.csv")))
    assert len(log) == 1 and (out / "C4" / "model.pt").is_file() and (out / "C4" / "config.ini").is_file()
    saved = load_checkpoint(out / "C4" / "model.pt")  # the engine's best checkpoint, under the configured name
    settings = saved["experiment"]["settings"]
    assert settings["model"] == {"group": "C4"} and settings["training"]["imsize"] == 46
    assert saved["config"]["model_kwargs"]["group"] == "C4"
    assert json.loads((out / "C4" / "result.json").read_text())["result"]["group"] == "C4"
    assert saved["config"]["optimizer"] == "adam" and saved["config"]["lr_schedule"] == "plateau"
    assert {"last.pt", "summary.json"} <= {p.name for p in (out / "C4").iterdir()}
    # the same sweep again reuses every finished run; a changed configuration (2 epochs) trains again
    again = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    assert again.stdout.count("reusing the finished run") == 5
    assert list(csv.DictReader(open(out / "results.csv"))) == rows
    more = subprocess.run(cmd[:cmd.index("--groups")] + ["--groups", "C2", "--epochs", "2"]
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
    res = subprocess.run(base + ["--sweep", "--groups", "C2", "--seeds", "0,1"],
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
    # the deprecated flags name the same runs (with a warning): all reused
    again = subprocess.run(base + ["--sweep", "--nrots", "2", "--bases", "CN", "--seeds", "0,1"],
                           capture_output=True, text=True, timeout=90, check=True)
    assert again.stdout.count("reusing the finished run") == 4
    assert "--nrots 2 --bases CN is deprecated; use --groups C2" in again.stderr
    for bad in (["--sweep", "--seeds", "0,0"], ["--seeds", "0,1"], ["--sweep", "--seeds", "0,1", "--seed", "3"],
                ["--sweep", "--seeds", "x"]):
        r = subprocess.run(base + bad, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--seeds" in r.stderr, (bad, r.stderr)


def test_summarize_seeds_checks_models():
    row = {"name": "vanilla", "base": "vanilla", "nrot": 1, "params": 10, "test_error": 0.1, "val_error": 0.2,
           "best_epoch": 3, "seconds": 1.0}
    (s,) = summarize_seeds({0: [row]})
    assert s["test_error"] == 0.1 and s["test_error_std"] == 0.0 and s["seeds"] == 1
    assert s["group"] == "vanilla"  # a row written before "group" existed: derived from base/nrot
    old_d4 = dict(row, name="D4", base="DN", nrot=4)
    new_d4 = {k: v for k, v in dict(old_d4, group="D4").items() if k not in ("base", "nrot")}
    (a,), (b,) = summarize_seeds({0: [old_d4]}), summarize_seeds({0: [new_d4]})
    assert a == b and (a["group"], a["base"], a["nrot"]) == ("D4", "DN", 4)
    with pytest.raises(ValueError, match="different models"):
        summarize_seeds({0: [row], 1: [dict(row, name="C4")]})
    with pytest.raises(ValueError, match="empty"):
        summarize_seeds({})


def _example_module():
    spec = importlib.util.spec_from_file_location("radio_galaxies_example", REPO / "examples" / "radio_galaxies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_groups_flag_and_the_deprecated_nrots_bases(capsys):
    ex = _example_module()
    cfg = ["--config", "x.ini"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert ex.parse_args(cfg + ["--sweep"]).groups == SWEEP_GROUPS
        assert ex.parse_args(cfg).groups == SWEEP_GROUPS
        assert ex.parse_args(cfg + ["--sweep", "--groups", "c4,D16"]).groups == ("C4", "D16")
        assert ex.parse_args(cfg + ["--sweep", "--groups", "C2", "--seeds", "0,1"]).groups == ("C2",)
    for old, groups in ((["--nrots", "2,4", "--bases", "CN"], ("C2", "C4")), (["--nrots", "4"], ("C4", "D4")),
                        (["--bases", "DN"], ("D2", "D4", "D8", "D16"))):
        message = " ".join(old) + " is deprecated; use --groups " + ",".join(groups)
        with pytest.warns(FutureWarning, match=message.replace(" ", r"\s")):
            assert ex.parse_args(cfg + ["--sweep"] + old).groups == groups
    for bad, match in ((["--sweep", "--groups", "C4", "--nrots", "4"], "--groups replaces --nrots"),
                       (["--sweep", "--groups", "C4", "--bases", "CN"], "--groups replaces --bases"),
                       (["--sweep", "--groups", "Z4"], "--groups: .*got 'Z4'"),
                       (["--sweep", "--groups", "C0"], "--groups: .*got 'C0'"),
                       (["--sweep", "--groups", "vanilla,C4"], "the vanilla LeNet always runs"),
                       (["--sweep", "--groups", "C4,c4"], "distinct"),
                       (["--groups", "C4"], "--groups needs --sweep"),
                       (["--sweep", "--nrots", "0"], "--nrots: expected comma-separated integers >= 1"),
                       (["--sweep", "--bases", "XN"], "--bases: expected CN, DN")):
        with pytest.raises(SystemExit) as exc:
            ex.parse_args(cfg + bad)
        assert exc.value.code == 2
        assert __import__("re").search(match, capsys.readouterr().err), bad


def test_sweep_groups_and_deprecated_keywords(tmp_path, monkeypatch):
    """run_sweep / run_seeds take group names; nrots=/bases= still work (FutureWarning); rows written before
    "group" existed (base/nrot only) still plot and summarise."""
    import gconv_ext.experiments.radio as radio

    def fake_run(run, data, log, **options):
        name = run.run_name
        row = {"name": name, "params": 1, "epochs": 1, "best_epoch": 1, "best_val_loss": 0.5, "val_error": 0.1,
               "test_error": 0.1 if name == "vanilla" else 0.05, "seconds": 0.0}
        if name in ("vanilla", "C2"):  # an old result.json row: base/nrot, no group
            return {**row, "base": "vanilla" if name == "vanilla" else "CN", "nrot": 1 if name == "vanilla" else 2}
        return {**row, "group": name}

    monkeypatch.setattr(radio, "load_radio_data", lambda cfg: {})
    monkeypatch.setattr(radio, "run_config", fake_run)
    cfg = parse_config(f"[output]\ndirectory = {tmp_path / 'sweep'}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rows = run_sweep(cfg, ("C2", "d4"), log=lambda m: None)
    assert [r["name"] for r in rows] == ["vanilla", "C2", "D4"]
    assert (tmp_path / "sweep" / "test_error_vs_N.png").stat().st_size > 1000
    with pytest.warns(FutureWarning, match=r"run_sweep\(nrots=\(2, 4\), bases=\('CN',\)\) is deprecated; "
                                           r"use groups=\('C2', 'C4'\)"):
        rows = run_sweep(cfg, nrots=(2, 4), bases=("CN",), log=lambda m: None)
    assert [r["name"] for r in rows] == ["vanilla", "C2", "C4"]
    with pytest.warns(FutureWarning, match=r"run_seeds\(nrots=\(2,\)\) is deprecated; use groups=\('C2', 'D2'\)"):
        summary = run_seeds(cfg, (0, 1), nrots=(2,), log=lambda m: None)
    assert [(r["name"], r["group"], r["base"], r["nrot"]) for r in summary] == [
        ("vanilla", "vanilla", "vanilla", 1), ("C2", "C2", "CN", 2), ("D2", "D2", "DN", 2)]
    assert (tmp_path / "sweep" / "test_error_vs_N.png").is_file()
    for kwargs, match in (({"groups": ("C4",), "nrots": (4,)}, "not both"), ({"groups": ("C4", 8)}, "got 8"),
                          ({"groups": ("vanilla",)}, "vanilla one always runs"), ({"groups": ("Z4",)}, "got 'Z4'"),
                          ({"groups": ("C4", "C4")}, "duplicates")):
        with pytest.raises(ValueError, match=match):
            run_sweep(cfg, **kwargs)
