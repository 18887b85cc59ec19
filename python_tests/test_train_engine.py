"""The training engine's options: recipes, learning-rate schedules, precision (fp64 / bf16 / auto),
torch.compile, provenance, the CLI generated from TrainConfig, and checkpoint errors."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from gconv_ext.cli import build_parser, main
from gconv_ext.provenance import cpu_model, provenance
from gconv_ext.train import RECIPES, TrainConfig, train
from gconv_ext.train import precision as prec
from gconv_ext.train.checkpoint import CheckpointError, load_checkpoint
from gconv_ext.train.schedule import lr_factor

from conftest import tiny_config, torch_threads


@pytest.fixture(autouse=True)
def _threads():
    with torch_threads(2):
        yield


# ------------------------------------------------------------------------------ config and recipes


def test_recipes_fill_only_unset_fields():
    study = TrainConfig(recipe="study")
    assert (study.lr, study.lr_schedule, study.warmup_epochs, study.epochs, study.patience, study.precision) == (
        1e-2, "constant", 0.0, 20, 5, "fp32")
    default = TrainConfig()
    assert default.recipe == "default" and default.to_dict() == TrainConfig(**RECIPES["default"]).to_dict()
    assert TrainConfig(recipe="study", lr=3e-4, epochs=4).lr == 3e-4
    assert TrainConfig(recipe="study", lr=3e-4, epochs=4).epochs == 4
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="fast")
    for bad in (dict(precision="fp8"), dict(lr_schedule="step"), dict(optimizer="lion"),
                dict(warmup_epochs=-1.0), dict(patience=-1), dict(lr=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_older_configs_read_as_the_study_recipe():
    d = TrainConfig(recipe="study").to_dict()
    for key in ("recipe", "lr_schedule", "warmup_epochs", "precision", "optimizer", "compile"):
        del d[key]
    cfg = TrainConfig.from_dict(d)
    assert cfg.recipe == "study" and cfg.lr_schedule == "constant" and cfg.precision == "fp32"


def test_cli_train_options_come_from_the_config():
    parser = build_parser()
    train_parser = next(a for a in parser._subparsers._group_actions[0].choices.values()
                        if "--recipe" in a._option_string_actions)
    for flag in ("--recipe", "--precision", "--compile", "--lr-schedule", "--warmup-epochs", "--optimizer",
                 "--lr", "--epochs", "--patience", "--ien-beta"):
        assert flag in train_parser._option_string_actions, flag
    assert train_parser._option_string_actions["--precision"].choices == ("fp32", "bf16", "fp16", "fp64", "auto")
    with pytest.raises(SystemExit):
        main(["train", "--precision", "fp8"])
    with pytest.raises(SystemExit):
        main(["train", "--warmup-epochs", "-1"])


# ------------------------------------------------------------------------------ schedules


def test_lr_schedules():
    total, warm = 100, 10
    assert [lr_factor("constant", s, total, warm) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cos = [lr_factor("cosine", s, total, warm) for s in range(total)]
    assert cos[9] == 1.0 and cos[10] == 1.0 and 0 < cos[-1] < 1e-3
    assert all(a >= b for a, b in zip(cos[10:], cos[11:]))  # monotone decay after the warm-up
    assert lr_factor("constant", 0, total, 0) == 1.0
    # onecycle follows torch's OneCycleLR (cosine annealing, div 25, final div 1e4)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=0.3,
                                                anneal_strategy="cos", cycle_momentum=False)
    ours = []
    for s in range(total):
        ours.append(lr_factor("onecycle", s, total, 0))
        assert math.isclose(ours[-1], opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12), s
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 0, 10, 0)


# ------------------------------------------------------------------------------ precision


def test_auto_precision_rules(monkeypatch):
    model = torch.nn.Linear(4, 2)
    sample = torch.randn(3, 4)
    cpu = torch.device("cpu")
    assert prec.resolve_precision("fp64", model, sample, cpu) == ("fp64", "requested")
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx2"})
    assert prec.resolve_precision("auto", model, sample, cpu)[0] == "fp32"
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert prec.resolve_precision("auto", model, sample, cpu)[0] == "bf16"
    # capped below AMX: measured, and the measurement decides either way
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setattr(prec, "measure_bf16_speedup", lambda make_step, **kw: 0.85)
    assert prec.resolve_precision("auto", model, sample, cpu) == (
        "fp32", "measured bf16/fp32 step speed 0.85x (threshold 1.15x)")
    monkeypatch.setattr(prec, "measure_bf16_speedup", lambda make_step, **kw: 1.8)
    assert prec.resolve_precision("auto", model, sample, cpu)[0] == "bf16"


def test_measure_bf16_speedup_runs_real_steps():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    ratio = prec.measure_bf16_speedup(prec._model_step_factory(model, torch.randn(8, 1, 8, 8), torch.device("cpu")),
                                      repeats=2, warmup=1)
    assert ratio > 0 and all(p.grad is None for p in model.parameters())


def test_fp64_run_keeps_float64_weights(tmp_path, shared_data_dir):
    train(tiny_config(tmp_path, shared_data_dir, precision="fp64", epochs=1))
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["precision"] == "fp64"
    assert all(v.dtype == torch.float64 for v in last["model"].values() if v.is_floating_point())


def test_fit_restores_the_process_settings_it_changes(tmp_path, shared_data_dir):
    # threads and deterministic mode are the run's, not the caller's: a notebook that trains and then
    # compiles or benchmarks must find its own settings again (even when the run fails).
    with torch_threads(2):
        train(tiny_config(tmp_path / "ok", shared_data_dir, epochs=1, threads=1, deterministic=True))
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
        with pytest.raises(FileExistsError):
            train(tiny_config(tmp_path / "ok", shared_data_dir, epochs=1, threads=1, deterministic=True))
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()


def test_bf16_run_learns_and_records_its_precision(tmp_path, shared_data_dir):
    summary = train(tiny_config(tmp_path, shared_data_dir, model="gcnn", precision="bf16", epochs=3, train_limit=512,
                         batch_size=16, lr=1e-2))
    assert summary["precision"] == "bf16" and summary["best_val_acc"] > 0.2
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert {r["precision"] for r in rows} == {"bf16"}
    # weights and optimiser state stay float32 under autocast
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "last.pt")["model"].values()
               if v.is_floating_point())


@pytest.mark.slow
def test_compiled_run_matches_eager_accuracy(tmp_path, shared_data_dir):
    eager = train(tiny_config(tmp_path / "eager", shared_data_dir, epochs=2, train_limit=512))
    compiled = train(tiny_config(tmp_path / "compiled", shared_data_dir, epochs=2, train_limit=512, compile=True))
    assert compiled["compile"] is True
    # Same data, same init; inductor reorders float sums, so the runs agree up to training noise.
    assert abs(compiled["best_val_acc"] - eager["best_val_acc"]) < 0.1


# ------------------------------------------------------------------------------ provenance, files


def test_provenance_in_metrics_summary_and_result(tmp_path, shared_data_dir):
    run = tmp_path / "run"
    assert main(["train", "--model", "cnn", "--preset", "tiny", "--epochs", "1", "--train-limit", "128",
                 "--val-limit", "64", "--test-limit", "64", "--precision", "fp32", "--device", "cpu", "--quiet",
                 "--data-dir", str(shared_data_dir), "--out-dir", str(run)]) == 0
    row = next(csv.DictReader(open(run / "metrics.csv")))
    expect = provenance("cpu", "fp32")
    for key in ("precision", "device_name", "threads", "torch", "git_commit"):
        assert row[key] == str(expect[key]), key
    assert row["device_name"] == cpu_model() != ""
    summary = json.loads((run / "summary.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert summary["provenance"]["torch"] == torch.__version__ == result["provenance"]["torch"]
    assert result["recipe"] == "default" and result["eval_provenance"]["precision"] == "fp32"
    assert result["eval_time_s"] > 0


def test_resume_errors_are_one_line(tmp_path, shared_data_dir, capsys):
    run = tmp_path / "run"
    common = ["--model", "cnn", "--preset", "tiny", "--epochs", "1", "--train-limit", "64", "--val-limit", "32",
              "--precision", "fp32", "--device", "cpu", "--quiet", "--no-test", "--data-dir", str(shared_data_dir)]
    assert main(["train", *common, "--out-dir", str(run)]) == 0
    # a best.pt where the last.pt should be
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    with pytest.raises(SystemExit) as exc:
        main(["train", *common, "--out-dir", str(run), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "last.pt" in err and "Traceback" not in err
    # a truncated last.pt
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    with pytest.raises(SystemExit) as exc:
        main(["train", *common, "--out-dir", str(run), "--resume"])
    assert exc.value.code == 2 and "truncated or corrupt" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(run / "last.pt")


def test_model_arguments_the_factory_rejects_give_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "gcnn", "--kernel-size", "99", "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model gcnn" in err and "Traceback" not in err
