"""Tests of the shared training engine (gconv_ext.train.engine.fit) and of the experiments that train through it:
the plateau schedule, runs without validation data, the experiment guard on resume, save_every, and resume of
the radio-galaxy, parity and learning-unequivariance runs.

Toy models and data (or a few radio/MNIST images); each test takes seconds on one thread.

Resumed and uninterrupted runs are compared exactly (torch.equal, ==): they replay the same computations on
the same data in one process, with deterministic CPU kernels, so they are bit-identical by construction.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gconv_ext.analysis import LN2, ParityGCNN, learn_unequivariance
from gconv_ext.analysis.parity import train_classifier
from gconv_ext.experiments.radio import load_radio_data, parse_config, run_config
from gconv_ext.nn import EquivarianceWarning
from gconv_ext.train import CheckpointError, RunFiles, TrainConfig, fit, load_checkpoint
from gconv_ext.train.datasets import TrainData


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)  # inexact sizes on purpose (parity, radio)
        yield
    torch.set_num_threads(n)


def _toy_data(val: bool = True) -> TrainData:
    """A linearly separable training set; its validation set has the opposite labels, so training makes the
    validation loss rise every epoch (the plateau schedule then reduces the rate after every epoch)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 4, 4, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    if not val:
        return TrainData(x, y, None, None, None)
    xv = torch.randn(32, 1, 4, 4, generator=gen)
    return TrainData(x, y, xv, 1 - (xv.mean(dim=(1, 2, 3)) > 0).long(), None)


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def _toy_cfg(out_dir, **kw) -> TrainConfig:
    base = dict(model="toy", optimizer="sgd", momentum=0.9, lr=0.5, weight_decay=0.0, lr_schedule="plateau",
                plateau_factor=0.5, plateau_patience=0, warmup_epochs=0.0, epochs=4, batch_size=16, patience=0,
                precision="fp32", device="cpu", quiet=True, out_dir=None if out_dir is None else str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def _same_history(a: list[dict], b: list[dict]) -> bool:
    times = ("epoch_time_s", "train_time_s", "images_per_s")
    return [{k: v for k, v in r.items() if k not in times} for r in a] == \
        [{k: v for k, v in r.items() if k not in times} for r in b]


def test_plateau_schedule_reduces_the_rate_and_resumes_bit_identically(tmp_path):
    full = fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path / "full", monitor="val_loss"))
    lrs = [r["lr"] for r in full["history"]]
    assert lrs == [0.5, 0.5, 0.25, 0.125]  # the validation loss rises after the first epoch: halved each time
    assert full["monitor"] == "val_loss" and full["best_epoch"] == 1
    assert full["best_metric"] == full["history"][0]["val_loss"] == full["best_val_loss"]
    fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path / "split", monitor="val_loss", stop_after=2))
    split = fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path / "split", monitor="val_loss", resume=True))
    assert split["epochs_completed"] == 4 and _same_history(full["history"], split["history"])
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["scheduler"] == b["scheduler"] and a["optimizer"]["param_groups"][0]["lr"] == 0.0625
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert load_checkpoint(tmp_path / "full" / "best.pt")["epoch"] == 1
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_acc,val_acc,val_loss,best_val_acc,lr,")
    # a warm-up comes first; the plateau scheduler takes over at the full rate
    warm = fit(_toy_model(), _toy_data(), _toy_cfg(None, warmup_epochs=1.0, epochs=2))
    assert [r["lr"] for r in warm["history"]] == [0.5, 0.5]


def test_no_validation_data_monitors_the_training_loss_and_writes_nothing_without_out_dir(tmp_path):
    summary = fit(_toy_model(), _toy_data(val=False), _toy_cfg(None, lr_schedule="constant", epochs=3))
    assert summary["monitor"] == "train_loss" and summary["n_val"] == 0 and summary["best_val_acc"] is None
    assert summary["out_dir"] is None and [r["val_acc"] for r in summary["history"]] == [None] * 3
    losses = [r["train_loss"] for r in summary["history"]]
    assert summary["best_metric"] == min(losses) and losses[-1] < losses[0]
    fit(_toy_model(), _toy_data(val=False), _toy_cfg(tmp_path, lr_schedule="constant", epochs=3))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["val_acc"] for r in rows] == ["", "", ""] and float(rows[-1]["train_loss"]) == losses[-1]


def test_resume_checks_the_experiment_and_overwrite_restarts(tmp_path):
    cfg = _toy_cfg(tmp_path, epochs=2)
    fit(_toy_model(), _toy_data(), cfg, meta={"experiment": "toy", "data": "a"})
    with pytest.raises(FileExistsError, match="--resume"):
        fit(_toy_model(), _toy_data(), cfg, meta={"experiment": "toy", "data": "a"})
    resume = _toy_cfg(tmp_path, epochs=3, resume=True)
    with pytest.raises(CheckpointError, match="experiment differs.*data: checkpoint 'a' vs now 'b'"):
        fit(_toy_model(), _toy_data(), resume, meta={"experiment": "toy", "data": "b"})
    with pytest.raises(CheckpointError, match="config differs.*lr"):
        fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path, lr=0.1, resume=True),
            meta={"experiment": "toy", "data": "a"})
    # resume + overwrite: a run of other settings is replaced by a new one, a run of the same settings continues
    again = fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path, epochs=3, resume=True, overwrite=True),
                meta={"experiment": "toy", "data": "b"})
    fresh = fit(_toy_model(), _toy_data(), _toy_cfg(None, epochs=3))
    assert _same_history(again["history"], fresh["history"]) and again["experiment"] == {"experiment": "toy", "data": "b"}
    more = fit(_toy_model(), _toy_data(), _toy_cfg(tmp_path, epochs=4, resume=True, overwrite=True),
               meta={"experiment": "toy", "data": "b"})
    assert len(more["history"]) == 4 and _same_history(more["history"][:3], fresh["history"])


def test_save_every_writes_less_often_and_keeps_the_best(tmp_path):
    data, kw = _toy_data(), dict(lr_schedule="constant", lr=0.05, epochs=5)
    each = fit(_toy_model(), data, _toy_cfg(tmp_path / "each", **kw))
    fit(_toy_model(), data, _toy_cfg(tmp_path / "rare", save_every=3, stop_after=4, **kw))
    assert load_checkpoint(tmp_path / "rare" / "last.pt")["epoch"] == 4  # the invocation's end is written
    rare = fit(_toy_model(), data, _toy_cfg(tmp_path / "rare", save_every=3, resume=True, **kw))
    assert _same_history(each["history"], rare["history"])
    best_each = load_checkpoint(tmp_path / "each" / "best.pt")
    best_rare = load_checkpoint(tmp_path / "rare" / "best.pt")
    assert best_each["epoch"] == best_rare["epoch"] == each["best_epoch"]
    for key, value in best_each["model"].items():
        assert torch.equal(value, best_rare["model"][key]), key
    files = RunFiles(metrics="log.csv", best="model.pt")
    fit(_toy_model(), data, _toy_cfg(tmp_path / "named", **kw), files=files)
    assert {"log.csv", "model.pt", "last.pt", "summary.json"} == {p.name for p in (tmp_path / "named").iterdir()}


def _radio_ini(shared_data_dir, out_dir, epochs, model="group = C2"):
    return (f"[model]\n{model}\n[data]\ndatadir = {shared_data_dir}\n[training]\n"
            f"imsize = 46\nmax_train = 20\nmax_test = 10\nepochs = {epochs}\nlr_factor = 0.5\n"
            f"lr_patience = 0\n[output]\ndirectory = {out_dir}\n")


def _radio_cfg(shared_data_dir, out_dir, epochs):
    return parse_config(_radio_ini(shared_data_dir, out_dir, epochs))


def test_radio_run_goes_through_the_engine_and_resumes(tmp_path, shared_data_dir):
    data = load_radio_data(_radio_cfg(shared_data_dir, tmp_path, 3))
    lines: list[str] = []
    full = run_config(_radio_cfg(shared_data_dir, tmp_path / "full", 3), data, lines.append)
    assert any(line.startswith("C2 epoch 3:") for line in lines)  # the engine's progress lines, named
    # interrupted after one epoch: no result.json; the next call resumes from last.pt
    run_config(_radio_cfg(shared_data_dir, tmp_path / "split", 3), data, lines.append, stop_after=1)
    assert not (tmp_path / "split" / "result.json").exists()
    lines.clear()
    split = run_config(_radio_cfg(shared_data_dir, tmp_path / "split", 3), data, lines.append)
    assert any("resuming" in line and "after epoch 1" in line for line in lines)
    assert (tmp_path / "split" / "result.json").is_file()
    assert {k: v for k, v in split.items() if k != "seconds"} == {k: v for k, v in full.items() if k != "seconds"}
    rows = list(csv.DictReader(open(tmp_path / "split" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and {"val_loss", "val_acc", "lr"} <= set(rows[0])
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["scheduler"] == b["scheduler"] and a["config"]["lr_schedule"] == "plateau"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert full["best_epoch"] == load_checkpoint(tmp_path / "full" / "model.pt")["epoch"]
    # more epochs continue the finished run (the result of 3 epochs is not reused for 4)
    lines.clear()
    longer = run_config(_radio_cfg(shared_data_dir, tmp_path / "split", 4), data, lines.append)
    assert longer["epochs"] == 4 and any("after epoch 3" in line for line in lines)
    assert len(list(csv.DictReader(open(tmp_path / "split" / "log.csv")))) == 4


def _to_former_keys(path: Path, group: str, base: str, nrot: int) -> None:
    """Rewrite a radio checkpoint as the code before ``[model] group`` wrote it (``base``/``nrot``)."""
    ckpt = load_checkpoint(path)
    kwargs = ckpt["config"]["model_kwargs"]
    assert kwargs.pop("group") == group
    ckpt["config"]["model_kwargs"] = {"base": base, "nrot": nrot, **kwargs}
    assert ckpt["experiment"]["settings"]["model"] == {"group": group}
    ckpt["experiment"]["settings"]["model"] = {"base": base, "nrot": nrot}
    torch.save(ckpt, path)


def test_radio_runs_of_the_former_base_nrot_keys_are_resumed_and_reused(tmp_path, shared_data_dir):
    """A run directory written before ``[model] group`` (``base = CN``, ``nrot = 2`` in last.pt, model.pt and
    result.json) is resumed and reused by the ``group = C2`` configuration, and by the deprecated keys."""
    data = load_radio_data(_radio_cfg(shared_data_dir, tmp_path, 2))
    out = tmp_path / "old"
    lines: list[str] = []
    run_config(_radio_cfg(shared_data_dir, out, 2), data, lines.append, stop_after=1)
    for name in ("last.pt", "model.pt"):
        _to_former_keys(out / name, "C2", "CN", 2)
    lines.clear()
    done = run_config(_radio_cfg(shared_data_dir, out, 2), data, lines.append)
    assert any("resuming" in line and "after epoch 1" in line for line in lines), lines
    assert done["group"] == "C2" and done["epochs"] == 2
    # the resumed run kept the names it was begun with
    assert load_checkpoint(out / "last.pt")["config"]["model_kwargs"]["base"] == "CN"
    # result.json as the former code wrote it: base/nrot in the config and the result, no "group"
    saved = json.loads((out / "result.json").read_text())
    assert "group = C2" in saved["config"]
    saved["config"] = saved["config"].replace("group = C2", "base = CN\nnrot = 2")
    saved["result"] = {k: v for k, v in saved["result"].items() if k != "group"}
    (out / "result.json").write_text(json.dumps(saved))
    lines.clear()
    again = run_config(_radio_cfg(shared_data_dir, out, 2), data, lines.append)
    assert lines == [f"C2: reusing the finished run in {out}"]
    assert again == done  # "group" is added to the former row
    with pytest.warns(FutureWarning, match="write group = C2 instead"):
        old_cfg = parse_config(_radio_ini(shared_data_dir, out, 2, "base = CN\nnrot = 2"))
    assert run_config(old_cfg, data, lines.append) == done
    # the result.json of another group (base = CN, nrot = 4) is not reused
    saved["config"] = saved["config"].replace("base = CN\nnrot = 2", "base = CN\nnrot = 4")
    (out / "result.json").write_text(json.dumps(saved))
    lines.clear()
    assert run_config(_radio_cfg(shared_data_dir, out, 2), data, lines.append)["group"] == "C2"
    assert not any("reusing" in line for line in lines)


def test_parity_training_resumes_and_refuses_other_data(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(96, 1, 28, 28, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    x2 = torch.rand(96, 1, 28, 28, generator=gen)

    def model():
        torch.manual_seed(0)
        return ParityGCNN(4, "C4", depth=1)

    full_model = model()
    full = train_classifier(full_model, x, y, 2, 32, 3e-3, out_dir=tmp_path / "full")
    assert full == train_classifier(model(), x, y, 2, 32, 3e-3)  # the same without files
    assert train_classifier(model(), x, y, 2, 32, 3e-3, out_dir=tmp_path / "split", stop_after=1) == full[:1]
    split_model = model()
    assert train_classifier(split_model, x, y, 2, 32, 3e-3, out_dir=tmp_path / "split") == full
    for key, value in full_model.state_dict().items():
        assert torch.equal(value, split_model.state_dict()[key]), key
    rows = list(csv.DictReader(open(tmp_path / "split" / "metrics.csv")))
    assert [float(r["train_loss"]) for r in rows] == full
    # other images in the same folder: a new run, not a resume of the old one
    assert train_classifier(model(), x2, y, 2, 32, 3e-3, out_dir=tmp_path / "split") == \
        train_classifier(model(), x2, y, 2, 32, 3e-3)


def test_learning_unequivariance_through_the_engine(tmp_path):
    losses = learn_unequivariance(32, steps=20, out_dir=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    # exact: metrics.csv stores repr(float), which round-trips. A fresh model's logits are small, so its first
    # loss on the balanced two-class task is ln 2 - mean margin / 2 + O(margin^2): 0.1 allows a mean logit
    # margin of ~0.2, far from a trained model's
    assert [float(r["train_loss"]) for r in rows] == losses and abs(losses[0] - LN2) < 0.1
    assert load_checkpoint(tmp_path / "last.pt")["config"]["optimizer"] == "sgd"
    longer = learn_unequivariance(32, steps=30, out_dir=tmp_path)  # continues the 20 steps
    assert longer[:20] == losses and longer == learn_unequivariance(32, steps=30)
