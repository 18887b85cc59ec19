"""The pretrained weights shipped as package data: present, checksummed, loadable offline, accurate; and
checkpoints of every format this version reads."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import gconv_ext.models.weights as pre
from gconv_ext.cli import main
from gconv_ext.data import load_mnist, rotated_test_set
from gconv_ext.models import count_parameters
from gconv_ext.train import TrainConfig, model_from_checkpoint
from gconv_ext.train.checkpoint import CheckpointError, load_checkpoint
from gconv_ext.train.engine import accuracy

#: The headline models the package must ship.
REQUIRED = ("gcnn-c4-upright", "gcnn-c4-rotated")


def test_required_weights_are_shipped_with_checksums():
    names = pre.available_pretrained()
    assert set(REQUIRED) <= set(names), names
    for name in names:
        info = pre.pretrained_info(name)
        path = pre.pretrained_path(name)  # verifies the SHA-256
        assert pre.sha256_file(path) == info["sha256"]
        assert path.stat().st_size < 1_000_000  # weights only: ~420 KB for C4/4/16
        assert load_checkpoint(path)["format"] in (1, 2)


@pytest.mark.parametrize("name", REQUIRED)
def test_pretrained_accuracy_on_rotated_test_digits(name, shared_data_dir):
    torch.set_num_threads(2)
    model = pre.pretrained(name)
    assert not model.training and count_parameters(model) == pre.pretrained_info(name)["num_params"]
    images, labels = load_mnist("test", shared_data_dir)
    x, y, _ = rotated_test_set(images[:400], labels[:400], seed=0)
    acc = accuracy(model, x, y)
    recorded = pre.pretrained_info(name)["rotated_test_acc"]
    # 400 digits: the sampling std of an accuracy near 0.9-0.98 is <= 1.5 points; 5 points is > 3 std.
    assert acc >= recorded - 0.05, (acc, recorded)
    assert acc > 0.85


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    for f in pre.PRETRAINED_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(pre, "PRETRAINED_DIR", tmp_path)
    pre._manifest.cache_clear()
    try:
        name = REQUIRED[0]
        target = tmp_path / pre.pretrained_info(name)["file"]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="SHA-256"):
            pre.pretrained(name)
        target.unlink()
        with pytest.raises(FileNotFoundError, match="missing"):
            pre.pretrained(name)
        with pytest.raises(ValueError, match="available"):
            pre.pretrained("no-such-model")
    finally:
        pre._manifest.cache_clear()


def test_evaluate_cli_takes_a_pretrained_name(tmp_path, shared_data_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "gcnn-c4-rotated", "--out-dir", str(out), "--data-dir", str(shared_data_dir),
                 "--test-limit", "64", "--angle-step", "90", "--quiet"]) == 0
    assert "rotated-test accuracy" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["n_rotated_test"] == 64 and result["model"] == "gcnn"


def test_format_1_checkpoints_still_load(tmp_path):
    # A checkpoint as the first release wrote it: format 1, a config without the recipe fields.
    cfg = TrainConfig(model="cnn", preset="tiny", recipe="study").to_dict()
    for key in ("recipe", "optimizer", "lr_schedule", "warmup_epochs", "precision", "compile"):
        del cfg[key]
    torch.manual_seed(0)
    model = TrainConfig(model="cnn", preset="tiny").build_model()
    torch.save({"format": 1, "config": cfg, "model": model.state_dict(), "epoch": 3, "val_acc": 0.5,
                "num_params": count_parameters(model)}, tmp_path / "best.pt")
    loaded, loaded_cfg, _ = model_from_checkpoint(tmp_path / "best.pt")
    assert loaded_cfg.recipe == "study" and loaded_cfg.lr == 1e-2 and loaded_cfg.lr_schedule == "constant"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("payload,needle", [
    (b"", "empty"),
    (b"not a zip file at all", "truncated or corrupt"),
])
def test_bad_checkpoint_files_name_the_file(tmp_path, payload, needle):
    path = tmp_path / "bad.pt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=needle) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)


def test_unknown_format_and_foreign_files_are_refused(tmp_path):
    torch.save({"format": 99, "config": {}, "model": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a gconv_ext training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_a_pickled_payload_is_refused_and_named(tmp_path):
    import os  # noqa: PLC0415

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "config": {}, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused by safe.*(?i:global)") as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)
