"""IEN training through the loop and the CLI, and the rotated-MNIST substitute as a training dataset.

Tiny subsets and the 'tiny' ien-cnn preset (8 channels, 2 layers) and one torch thread keep the file
under a minute on two CPU cores; the rotated-MNIST substitute is built once per session into a temporary cache folder.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, torch_threads

from gconv_ext.cli import main
from gconv_ext.data import make_rotated_mnist, normalize, to_float01
from gconv_ext.losses import apply_transform, sample_transforms
from gconv_ext.models import IENCNN, count_parameters, ien_cnn, ien_cnn_parameter_count, ien_loss
from gconv_ext.train import TrainConfig, build_model, load_checkpoint, train
from gconv_ext.train.evaluate import evaluate_checkpoint, write_results_table
from gconv_ext.train.checkpoint import _resume_view
from gconv_ext.train.datasets import TrainData, epoch_generator, load_train_data
from gconv_ext.train.distributed import DistContext
from gconv_ext.train.engine import _Run, make_optimizer
from gconv_ext.train.objective import build_objective


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def rot_cache(tmp_path_factory, shared_data_dir):
    """A temporary cache folder holding the rotated-MNIST substitute (built once)."""
    cache = tmp_path_factory.mktemp("rot_cache")
    make_rotated_mnist(shared_data_dir, cache)
    return cache


def _cfg(tmp, data_dir, **kw) -> TrainConfig:
    base = dict(model="ien-cnn", preset="tiny", ien_beta=1.0, epochs=2, batch_size=16, train_limit=256,
                val_limit=128, test_limit=128, data_dir=str(data_dir), out_dir=str(tmp), device="cpu", quiet=True,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------ registry, config


def test_registry_ien_cnn_presets():
    matched = build_model("ien-cnn", preset="matched")
    assert isinstance(matched, IENCNN) and len(matched.blocks) == 4
    assert count_parameters(matched) == 99_070 == ien_cnn_parameter_count(60, 4)  # 60 channels, orbits of 4
    hetero = build_model("ien-cnn", preset="hetero")
    assert set(hetero.orbit_spec.sizes) == {4, 2, 1}
    assert abs(count_parameters(hetero) - 102_970) < 0.1 * 102_970
    tiny = build_model("ien-cnn", preset="tiny")
    assert count_parameters(tiny) == ien_cnn_parameter_count(8, 2) and tiny.monitored_layers == ["blocks.0", "blocks.1"]
    for c, layers, k in ((12, 3, 5), (44, 4, 3)):
        assert count_parameters(ien_cnn(c, layers, (4,), kernel_size=k)) == ien_cnn_parameter_count(c, layers, k)
    with pytest.raises(ValueError, match="not both"):
        build_model("ien-cnn", channels=8, params=1000)


def test_ien_config_validation_and_objective_errors():
    with pytest.raises(ValueError, match="ien_beta"):
        TrainConfig(ien_beta=-1.0)
    with pytest.raises(ValueError, match="ien_beta"):
        TrainConfig(ien_beta=float("nan"))
    with pytest.raises(ValueError, match="ien_transforms"):
        TrainConfig(ien_transforms="rot30")
    with pytest.raises(ValueError, match="ien_layers"):
        TrainConfig(ien_layers="blocks.0")
    with pytest.raises(ValueError, match="dataset"):
        TrainConfig(dataset="mnist-rot")
    cfg = TrainConfig(model="ien-cnn", ien_beta=0.5, ien_layers=["blocks.1"], dataset="rotated-mnist")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg and cfg.val_size == 2000
    assert TrainConfig().val_size == 10000
    with pytest.raises(ValueError, match="orbit"):
        build_objective(TrainConfig(model="cnn", preset="tiny", ien_beta=1.0), build_model("cnn", preset="tiny"))
    tiny = build_model("ien-cnn", preset="tiny")
    with pytest.raises(ValueError, match="ien_layers.*nope"):
        build_objective(TrainConfig(model="ien-cnn", ien_beta=1.0, ien_layers=["nope"]), tiny)
    assert build_objective(TrainConfig(model="ien-cnn"), tiny) is None
    assert build_objective(TrainConfig(model="ien-cnn", ien_beta=1.0), tiny).metric_names == [
        "mse_blocks.0", "mse_blocks.1"]


def test_resume_view_accepts_older_checkpoints():
    old = TrainConfig().to_dict()
    for key in ("dataset", "ien_beta", "ien_transforms", "ien_layers", "cache_dir"):
        del old[key]
    old["n_val"] = 10000  # older checkpoints stored the MNIST default explicitly
    assert _resume_view(old) == _resume_view(TrainConfig().to_dict())


def test_loss_accepts_given_elements():
    model = ien_cnn(8, 2, (4,)).eval()
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    e = sample_transforms(3, "C4", torch.Generator().manual_seed(2))
    a = ien_loss(model, 1.0, "C4", torch.Generator().manual_seed(2))(x, y)
    b = ien_loss(model, 1.0, "C4")(x, y, e)
    assert torch.equal(a.elements, b.elements) and torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError, match="elements"):
        ien_loss(model, 1.0, "C4")(x, y, torch.tensor([1, 4, 2]))  # C4 has 4 elements: 0..3
    with pytest.raises(ValueError, match="elements"):
        ien_loss(model, 1.0, "C4")(x, y, e[:2])


# ------------------------------------------------------------------------------ objective, unit level


def _one_epoch(beta: float, seed: int = 0):
    torch.manual_seed(5)
    data = TrainData(torch.rand(24, 1, 12, 12), torch.randint(0, 10, (24,)), torch.zeros(1, 1, 12, 12),
                     torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64))
    # SGD (momentum: its first step is plain SGD), constant lr 0.1, no decay: one step by hand below
    cfg = TrainConfig(model="ien-cnn", preset="tiny", ien_beta=beta, batch_size=24, epochs=1, seed=seed,
                      quiet=True, device="cpu", optimizer="sgd", lr=0.1, weight_decay=0.0,
                      lr_schedule="constant", warmup_epochs=0.0, precision="fp32")
    torch.manual_seed(0)
    model = cfg.build_model()
    opt = make_optimizer(cfg, model.parameters())
    run = _Run(cfg, DistContext(0, 1, 0, torch.device("cpu")), model, model, opt, data,
               build_objective(cfg, model), "fp32", prepare=normalize)
    stats = run.epoch(0)
    return data, cfg, model, stats


def test_beta_zero_equals_cross_entropy_on_the_doubled_batch():
    data, cfg, trained, stats = _one_epoch(0.0)
    # By hand: the same epoch generator draws the shuffle, then the transforms of the (single) batch.
    gen = epoch_generator(cfg.seed, 0)
    perm = torch.randperm(24, generator=gen)
    e = sample_transforms(24, "C4", gen)
    x = normalize(data.train_x[perm])
    y = data.train_y[perm]
    torch.manual_seed(0)
    ref = cfg.build_model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    logits = ref(torch.cat([x, apply_transform(x, e, "C4")]))
    loss = F.cross_entropy(logits, torch.cat([y, y]))
    loss.backward()
    opt.step()
    for (name, p), q in zip(trained.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert stats["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert stats["train_ce"] == pytest.approx(loss.item(), rel=1e-6)
    assert stats["train_acc"] == pytest.approx((logits.argmax(1) == torch.cat([y, y])).float().mean().item())
    assert stats["mse_blocks.0"] > 0 and stats["mse_blocks.1"] > 0  # logged even though beta = 0
    # beta = 1 sees the same batches; the equivariance term changes the step and is part of the loss
    _, _, trained1, stats1 = _one_epoch(1.0)
    assert stats1["train_ce"] == pytest.approx(stats["train_ce"], rel=1e-6)
    assert stats1["train_loss"] == pytest.approx(
        stats1["train_ce"] + stats1["mse_blocks.0"] + stats1["mse_blocks.1"], rel=1e-5)
    assert not torch.allclose(trained1.blocks[0][0].weight, trained.blocks[0][0].weight)


# ------------------------------------------------------------------------------ training runs


def test_ien_training_smoke_through_cli(tmp_path, shared_data_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "ien-cnn", "--preset", "tiny", "--ien-beta", "1", "--ien-transforms",
                 "D4", "--epochs", "3", "--batch-size", "16", "--train-limit", "320", "--val-limit", "64",
                 "--data-dir", str(shared_data_dir), "--device", "cpu", "--no-test", "--quiet",
                 "--out-dir", str(out)]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_ce", "mse_blocks.0", "mse_blocks.1"} <= set(rows[0])
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ien_beta"] == 1.0 and summary["config"]["ien_transforms"] == "D4"
    assert set(summary["final_train_mse"]) == {"mse_blocks.0", "mse_blocks.1"}
    assert 0.0 <= summary["best_val_acc"] <= 1.0  # (8 channels, 512 digits: no accuracy claim here)


def test_ien_resume_is_bit_identical(tmp_path, shared_data_dir):
    kw = dict(train_rotation="uniform", train_limit=96, val_limit=32)
    train(_cfg(tmp_path / "full", shared_data_dir, **kw))
    train(_cfg(tmp_path / "split", shared_data_dir, stop_after=1, **kw))
    summary = train(_cfg(tmp_path / "split", shared_data_dir, resume=True, **kw))
    assert summary["epochs_completed"] == 2
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert full["history"] == [dict(r, epoch_time_s=f["epoch_time_s"], train_time_s=f["train_time_s"],
                                    images_per_s=f["images_per_s"])
                               for r, f in zip(split["history"], full["history"])]
    assert "train_ce,mse_blocks.0,mse_blocks.1,precision" in (tmp_path / "split" / "metrics.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="config differs.*ien_beta"):
        train(_cfg(tmp_path / "split", shared_data_dir, resume=True, **{**kw, "ien_beta": 0.0, "epochs": 3}))


def test_rotated_mnist_dataset(tmp_path, shared_data_dir, rot_cache, capsys):
    rot = make_rotated_mnist(shared_data_dir, rot_cache)
    assert rot.from_cache
    full = load_train_data(TrainConfig(dataset="rotated-mnist", data_dir=str(shared_data_dir), cache_dir=str(rot_cache)))
    assert full.train_x.shape[0] == 10000 and full.val_x.shape[0] == 2000
    # validation digits are substitute training digits at their own (already applied) angles
    first = int((rot.train_angles == full.val_angles[0]).nonzero()[0])
    assert torch.equal(full.val_x[0], normalize(to_float01(rot.train_images[first]).unsqueeze(0)))

    out = tmp_path / "run"
    argv = ["train", "--model", "ien-cnn", "--preset", "tiny", "--dataset", "rotated-mnist", "--ien-beta", "0",
            "--cache-dir", str(rot_cache), "--epochs", "1", "--train-limit", "128", "--val-limit", "64",
            "--test-limit", "96", "--data-dir", str(shared_data_dir), "--device", "cpu", "--quiet", "--out-dir", str(out)]
    assert main(argv) == 0
    assert "rotated-MNIST SUBSTITUTE" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "rotated-mnist" and result["n_rotated_test"] == 96 and result["n_test"] == 96
    assert "SUBSTITUTE" in result["test_set"] and "mnist_rotation_new" in result["test_set"]
    assert result["name"] == "ien-cnn (tiny), IEN beta=0"
    # rotated-test accuracy = accuracy on the substitute's test digits (here the first 96)
    ckpt = load_checkpoint(out / "best.pt")
    model = TrainConfig.from_dict(ckpt["config"]).build_model()
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        pred = model(normalize(to_float01(rot.test_images[:96]).unsqueeze(1))).argmax(1)
    assert result["rotated_test_acc"] == pytest.approx((pred == rot.test_labels[:96]).float().mean().item())
    assert torch.equal(torch.load(out / "test_angles.pt", weights_only=True)["angles"], rot.test_angles[:96])
    text = write_results_table([result], tmp_path / "t.md")
    assert "| rotated test set |" in text.splitlines()[0] and "SUBSTITUTE" in text.splitlines()[2]
    # the cache folder may also come from GCONV_EXT_CACHE_DIR
    again = evaluate_checkpoint(out / "best.pt", tmp_path / "again", shared_data_dir, angles=[0.0],
                                cache_dir=rot_cache)
    assert again["rotated_test_acc"] == result["rotated_test_acc"]


def test_rotated_mnist_cache_from_env(tmp_path, shared_data_dir, rot_cache, monkeypatch):
    monkeypatch.setenv("GCONV_EXT_CACHE_DIR", str(rot_cache))
    data = load_train_data(TrainConfig(dataset="rotated-mnist", data_dir=str(shared_data_dir), n_val=500,
                                       train_limit=10, val_limit=5))
    assert data.train_x.shape == (10, 1, 28, 28) and data.val_x.shape[0] == 5
    rot = make_rotated_mnist(shared_data_dir)  # no cache_dir: the variable's folder, already built
    assert rot.from_cache and rot.cache_path.parent == rot_cache


# ------------------------------------------------------------------------------ CLI errors


@pytest.mark.parametrize(("argv", "needle"), [
    (["--ien-beta", "-1"], "--ien-beta"),
    (["--ien-beta", "nan"], "--ien-beta"),
    (["--ien-beta", "lots"], "--ien-beta"),
    (["--ien-beta", "1", "--ien-transforms", "rot30"], "--ien-transforms"),
    (["--dataset", "mnist-rot"], "--dataset"),
    (["--n-val", "0"], "--n-val"),
    (["--ien-beta", "1", "--model", "cnn"], "--ien-beta"),
    (["--ien-beta", "1", "--model", "ien-cnn", "--ien-layers", "blocks.0,nope"], "--ien-layers"),
    (["--ien-beta", "1", "--model", "ien-cnn", "--ien-layers", "blocks.0,,x"], "--ien-layers"),
    (["--model", "ien-cnn", "--ien-transforms", "D4"], "--ien-transforms"),
    (["--model", "ien-cnn", "--group", "C4"], "group"),
])
def test_cli_bad_ien_arguments(argv, needle, capsys, shared_data_dir):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data-dir", str(shared_data_dir), *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_compare_ien_example_smoke(tmp_path, shared_data_dir, rot_cache):
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(REPO / "examples" / "compare_ien.py"), "--budget", "smoke", "--out", str(out),
           "--data-dir", str(shared_data_dir), "--cache-dir", str(rot_cache), "--threads", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "smoke" / "compare_ien.md").read_text()
    assert "SUBSTITUTE" in text and "not comparable" in text and proc.stdout == text
    rows = [line for line in text.splitlines() if line.startswith("| ien-cnn") or line.startswith("| gcnn")]
    assert len(rows) == 3 and "IEN beta=1" in rows[0] and "beta=0" in rows[1] and "| 786 |" in rows[0]
    data = json.loads((out / "smoke" / "compare_ien.json").read_text())
    assert [r["ien_beta"] for r in data["results"]] == [1.0, 0.0, None]
    assert all(r["dataset"] == "rotated-mnist" and r["n_rotated_test"] == 2000 for r in data["results"])
    assert not list((out / "smoke").glob(".*.tmp"))


def test_old_ien_transform_names_are_read_as_group_names():
    with pytest.warns(DeprecationWarning, match="C4"):
        assert TrainConfig(ien_transforms="rot90").ien_transforms == "C4"
    # a checkpoint's config from before the group names resumes as the same run
    assert TrainConfig.from_dict({"ien_transforms": "rot90+flip", "recipe": "default"}).ien_transforms == "D4"
