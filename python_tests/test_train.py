"""Tests of gconv_ext.train (registry, loop, evaluation) and the gconv_ext command line.

Everything runs on tiny subsets of the real MNIST files (512 training, 256 validation/test digits)
with the 'tiny' CNN preset (8 channels, 2 layers), so the whole file takes well under a minute on
two CPU cores.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gconv_ext.cli import main
from gconv_ext.models import CNN, STN, count_parameters
from gconv_ext.train import (
    TrainConfig,
    available_models,
    build_model,
    load_checkpoint,
    model_presets,
    register_model,
    train,
    unregister_model,
)
from gconv_ext.train.evaluate import evaluate_checkpoint, load_results, write_results_table
from gconv_ext.train.datasets import epoch_generator

REPO = Path(__file__).resolve().parents[1]

from conftest import tiny_config, torch_threads


def _cfg(tmp, data_dir, **kw) -> TrainConfig:
    return tiny_config(tmp, data_dir, **kw)


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads(2):
        yield


# ------------------------------------------------------------------------------ registry


def test_registry_builtins_and_presets():
    for name in ("cnn", "stn-single-rotation", "stn-multi-rotation", "stn-single-affine", "stn-multi-affine",
                 "stn-single-rotation-tanh", "stn-multi-rotation-sigmoid"):
        assert name in available_models()
    assert build_model("stn-multi-rotation-sigmoid", preset="tiny").head == "rotation-sigmoid"
    assert isinstance(build_model("cnn"), CNN) and count_parameters(build_model("cnn")) == 103_690
    stn = build_model("stn-multi-affine", channels=8, layers=2, loc_channels=4)
    assert isinstance(stn, STN) and stn.mode == "multi" and stn.head == "affine"
    assert count_parameters(build_model("cnn", preset="matched")) == 103_690
    assert count_parameters(build_model("stn-single-rotation", preset="matched")) == 100_392  # grid localiser
    assert count_parameters(build_model("stn-single-rotation-tanh", preset="matched")) == 104_199
    tiny = build_model("cnn", preset="tiny", channels=4)  # explicit kwargs override the preset
    assert tiny.channels == 4 and tiny.layers == 2
    assert set(model_presets("cnn")) >= {"default", "matched", "tiny"}


def test_registry_errors_and_registration():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="does not take argument.*group"):
        build_model("cnn", group="C4")
    with pytest.raises(ValueError, match="no preset 'huge'"):
        build_model("cnn", preset="huge")
    with pytest.raises(ValueError, match="channels"):
        build_model("cnn", channels=0)

    def make_toy(*, group: str = "C4", channels: int = 2) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10 * int(group[1:]) * channels // (4 * channels)))

    register_model("toy-gcnn", make_toy, presets={"tiny": {"channels": 1}})
    try:
        assert "toy-gcnn" in available_models()
        assert isinstance(build_model("toy-gcnn", preset="tiny", group="C4"), nn.Module)
        with pytest.raises(ValueError, match="already registered"):
            register_model("toy-gcnn", make_toy)
    finally:
        unregister_model("toy-gcnn")
    assert "toy-gcnn" not in available_models()


# ------------------------------------------------------------------------------ training


def test_config_validation():
    with pytest.raises(ValueError, match="train_rotation"):
        TrainConfig(train_rotation="sometimes")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    cfg = TrainConfig(model="cnn", model_kwargs={"channels": 4})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_epoch_generator_is_seeded():
    a = torch.rand(5, generator=epoch_generator(3, 1))
    assert torch.equal(a, torch.rand(5, generator=epoch_generator(3, 1)))
    assert not torch.equal(a, torch.rand(5, generator=epoch_generator(3, 2)))
    assert not torch.equal(a, torch.rand(5, generator=epoch_generator(4, 1)))


def test_smoke_training_lowers_loss_and_beats_chance(tmp_path, shared_data_dir):
    # the tiny 1,906-parameter CNN wants a higher peak lr than the recipe's 5e-3 for the 103K models
    cfg = _cfg(tmp_path, shared_data_dir, epochs=3, train_rotation="uniform", batch_size=16,
               train_limit=768, lr=1e-2)
    summary = train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    assert summary["best_val_acc"] > 0.2  # chance is 0.1 (rotated validation digits)
    assert {"lr", "epoch_time_s", "images_per_s", "train_acc", "val_acc"} <= set(rows[0])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["epochs_completed"] == 3 and saved["num_params"] == 1906 and saved["finished"]
    last = load_checkpoint(tmp_path / "last.pt")
    best = load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 3 and {"optimizer", "rng", "best_val_acc", "epochs_since_best"} <= set(last)
    assert best["epoch"] == summary["best_epoch"] and best["val_acc"] == summary["best_val_acc"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_default_recipe_learns_in_one_short_epoch(tmp_path, shared_data_dir):
    # The study's constant AdamW lr 1e-2 leaves the GCNN C4/4/16 at chance (~0.1) after one epoch on 8,000
    # digits; the default recipe's warm-up + cosine gets past the initial plateau. This is a property of the
    # optimisation, not of a CPU's rounding: 0.3 is 9 binomial standard deviations above chance.
    torch.set_num_threads(2)
    summary = train(_cfg(tmp_path, shared_data_dir, model="gcnn", preset="C4/4/16", epochs=1, train_limit=8000,
                         val_limit=500))
    assert summary["best_val_acc"] > 0.3  # chance is 0.1; 500 digits: std of an accuracy < 0.023


def test_refuses_to_overwrite_a_run(tmp_path, shared_data_dir):
    cfg = _cfg(tmp_path, shared_data_dir, epochs=1, train_limit=64, val_limit=32)
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


def _assert_same_run(a: dict, b: dict) -> None:
    """Two last.pt checkpoints hold bitwise the same weights, optimiser state and metrics."""
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for i, (sa, sb) in enumerate(zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                                     strict=True)):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), (i, name)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[row[k] for k in keys] for row in a["history"]] == [[row[k] for k in keys] for row in b["history"]]


@pytest.mark.parametrize("model", ["cnn", "gcnn"])
def test_same_seed_and_resume_are_bit_identical(tmp_path, shared_data_dir, model):
    """Same seed, same thread count (2, this file's fixture), CPU: two uninterrupted runs give bitwise the same
    weights, optimiser state and metrics, and so does a run interrupted after one epoch and resumed. The GCNN's
    training step goes through the lifting and group convolutions, their filter transforms and the group
    max pool, forward and backward; every op alone under use_deterministic_algorithms: test_determinism.py."""
    kw = dict(model=model, epochs=2, train_rotation="uniform", train_limit=256 if model == "cnn" else 128,
              val_limit=128, patience=5)
    train(_cfg(tmp_path / "full", shared_data_dir, **kw))
    train(_cfg(tmp_path / "again", shared_data_dir, **kw))
    train(_cfg(tmp_path / "split", shared_data_dir, stop_after=1, **kw))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    summary = train(_cfg(tmp_path / "split", shared_data_dir, resume=True, **kw))
    assert summary["epochs_completed"] == 2
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    assert full["history"][0]["train_loss"] != full["history"][1]["train_loss"]  # it trained
    _assert_same_run(full, load_checkpoint(tmp_path / "again" / "last.pt"))
    _assert_same_run(full, load_checkpoint(tmp_path / "split" / "last.pt"))
    if model == "cnn":
        with pytest.raises(ValueError, match="config differs.*lr"):
            train(_cfg(tmp_path / "split", shared_data_dir, resume=True, lr=0.5, **{**kw, "epochs": 3}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# DDP == one process, compared in float64: the two half-batch gradient sums and their all-reduce add in
# another order than one full-batch sum. Each gradient entry is a sum of n <= ~1e5 terms, so the two
# orders differ by at most gamma_n * sum|terms| ~ 1e-11 relative (u = 1.1e-16). AdamW's step is
# lr * m / (sqrt(v) + eps): a relative gradient error passes through unamplified where |g| >> eps = 1e-8,
# and where |g| is itself rounding noise the step is at most lr * |error| / eps ~ 5e-3 * 1e-15 / 1e-8.
# Over 16 steps both stay below ~1e-10, while a wrong shard or a wrong loss scale moves weights by ~1e-2.
# In float32 the same comparison depends on how each CPU's oneDNN kernels order their sums (1.7e-5 seen
# on an Intel Xeon with AMX, through AdamW), so it is not made there.
@pytest.mark.parametrize("model", ["cnn", "gcnn"])
def test_ddp_two_processes_equal_single_process(tmp_path, shared_data_dir, model):
    # 225 = 7 full global batches + one of a single digit: the ranks get 16/16 and then 1/0 digits.
    common = ["--model", model, "--preset", "tiny", "--epochs", "2", "--batch-size", "32", "--train-limit", "225",
              "--val-limit", "128", "--train-rotation", "uniform", "--device", "cpu", "--threads", "1", "--precision", "fp64",
              "--data-dir", str(shared_data_dir), "--no-test", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "gconv_ext", "train", *common, "--out-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["train", *common, "--out-dir", str(tmp_path / "single")]) == 0
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    for key, value in single["model"].items():
        assert value.dtype == torch.float64, key
        torch.testing.assert_close(ddp["model"][key], value, rtol=0, atol=1e-9, msg=lambda m: f"{key}: {m}")
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp_summary["world_size"] == 2
    assert ddp_summary["best_val_acc"] == pytest.approx(single["val_acc"], abs=1 / 128 + 1e-9)


# ------------------------------------------------------------------------------ evaluation


def test_evaluation_writes_csv_png_and_table(tmp_path, shared_data_dir):
    run = tmp_path / "run"
    train(_cfg(run, shared_data_dir, epochs=1, train_limit=128, val_limit=64))
    result = evaluate_checkpoint(run / "best.pt", data_dir=shared_data_dir, test_limit=64,
                                 angles=[0.0, 45.0, 90.0, 180.0])
    for name in ("per_angle.csv", "per_angle.png", "result.json", "test_angles.pt"):
        assert (run / name).is_file(), name
    with open(run / "per_angle.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["angle_deg"] for r in rows] == ["0", "45", "90", "180"]
    assert (run / "per_angle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    angles = torch.load(run / "test_angles.pt", weights_only=True)
    assert angles["seed"] == 0 and angles["angles"].shape == (64,)
    # The rotated test set is fixed: evaluating again gives the same numbers.
    again = evaluate_checkpoint(run / "best.pt", tmp_path / "again", shared_data_dir, test_limit=64,
                                angles=[0.0, 45.0, 90.0, 180.0])
    assert again["rotated_test_acc"] == result["rotated_test_acc"]
    assert result["per_angle"][0.0] == pytest.approx(result["upright_test_acc"])
    assert result["num_params"] == 1906 and result["train_time_s"] > 0

    other = dict(result, name="other | model", train_rotation="uniform", train_time_s=300.0)
    text = write_results_table(load_results([run]) + [other], tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text() == text
    lines = text.splitlines()
    assert lines[0].startswith("| model | params | train setting | rotated-test acc | upright acc")
    assert len(lines) == 4 and "| 1,906 | upright |" in lines[2] and "5.0 min" in lines[3]
    assert "other \\| model" in lines[3]


# ------------------------------------------------------------------------------ CLI


def test_cli_missing_data_dir_subprocess(tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = subprocess.run([sys.executable, "-m", "gconv_ext", "train", "--data-dir", str(missing)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "--data-dir" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "many"], "--batch-size"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--model", "resnet"], "--model"),
    (["train", "--train-rotation", "sometimes"], "--train-rotation"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--model-arg", "no_equals_sign"], "--model-arg"),
    (["train", "--model", "cnn", "--group", "C4"], "group"),
    (["train", "--channels", "8", "--params", "1000"], "params"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_cli_missing_data_dir_in_process(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path / "best.pt"), "--data-dir", str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "--data-dir" in err and len(err.strip().splitlines()) == 1


def test_cli_bad_data_file(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run"), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train-images-idx3-ubyte" in err and "Traceback" not in err


def test_cli_train_evaluate_table(tmp_path, shared_data_dir, capsys):
    run = tmp_path / "run"
    common = ["--data-dir", str(shared_data_dir), "--device", "cpu", "--quiet", "--test-limit", "64"]
    assert main(["train", "--model", "cnn", "--preset", "tiny", "--epochs", "1", "--train-limit", "128", "--val-limit", "64",
                 "--no-test", "--out-dir", str(run), *common]) == 0
    assert main(["evaluate", str(run / "best.pt"), "--angle-step", "90", "--name", "tiny cnn", *common]) == 0
    assert "tiny cnn: rotated-test accuracy" in capsys.readouterr().out
    with open(run / "per_angle.csv") as f:
        assert [r["angle_deg"] for r in csv.DictReader(f)] == ["0", "90", "180", "270"]
    assert main(["table", str(run), "-o", str(tmp_path / "t.md")]) == 0
    assert "| tiny cnn | 1,906 | upright |" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["table", str(tmp_path / "missing")])
    assert exc.value.code == 2
