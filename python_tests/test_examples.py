"""Smoke runs of the example scripts and the visualize command."""
import json
import subprocess
import sys

from conftest import REPO


def test_reproduce_study_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "examples/reproduce_study.py", "--budget", "smoke", "--out-dir", str(out),
                           "--data-dir", str(shared_data_dir), "--quiet", "--threads", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    for label in ("GCNN C4 (tiny)", "STN (tiny)", "CNN (tiny)"):
        assert table.count(f"| {label} |") == 2  # upright and rotated
    assert (out / "per_angle_trained_upright.png").stat().st_size > 1000
    assert (out / "per_angle.csv").read_text().count("\n") == 1 + 6 * 4  # 6 runs x 4 angles
    gcnn_run = out / "gcnn-c4-tiny-upright-seed0"
    for name in ("filters_lifting.png", "filters_group.png", "group_feature_maps.png", "per_angle.png"):
        assert (gcnn_run / name).is_file(), name
    assert (out / "stn-tiny-rotated-seed0" / "stn_transforms.png").is_file()
    # a second call finds every result and retrains nothing
    again = subprocess.run([sys.executable, "examples/reproduce_study.py", "--budget", "smoke", "--out-dir",
                            str(out), "--data-dir", str(shared_data_dir), "--quiet"],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert again.returncode == 0 and again.stdout == proc.stdout
    # the CLI's visualize command on one of those checkpoints
    from gconv_ext.cli import main

    assert main(["visualize", str(out / "stn-tiny-upright-seed0" / "best.pt"), "--out-dir", str(tmp_path / "vis"),
                 "--data-dir", str(shared_data_dir)]) == 0
    assert (tmp_path / "vis" / "stn_transforms.png").is_file()


def test_search_small_models_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "search"
    cmd = [sys.executable, "examples/search_small_models.py", "--stage", "smoke", "--only", "C4-2-22,C8-2-16-disk",
           "--out-dir", str(out), "--data-dir", str(shared_data_dir), "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (out / "search.csv").read_text().splitlines()
    assert rows[0].startswith("name,group,layers,channels,disk_mask,params,val_acc") and len(rows) == 3
    assert {r.split(",")[0] for r in rows[1:]} == {"C4-2-22", "C8-2-16-disk"}
    sys.path.insert(0, str(REPO / "examples"))
    from search_small_models import MAX_PARAMS, candidates  # noqa: PLC0415

    assert all(c["params"] <= MAX_PARAMS for c in candidates())


def test_rotated_mnist_gcnn_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "rot"
    cmd = [sys.executable, "examples/rotated_mnist_gcnn.py", "--budget", "smoke", "--seeds", "0,1", "--out-dir", str(out),
           "--data-dir", str(shared_data_dir), "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert "SUBSTITUTE" in text and "over seeds 0, 1" in text
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[2] == "256"  # the rotated test set: the first 256 digits


def test_precision_accuracy_smoke(tmp_path, shared_data_dir):
    out = tmp_path / "prec"
    cmd = [sys.executable, "examples/precision_accuracy.py", "--seeds", "0", "--epochs", "1", "--train-limit", "256",
           "--val-limit", "128", "--test-limit", "256", "--out-dir", str(out), "--data-dir", str(shared_data_dir),
           "--threads", "1", "--quiet"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert "| fp32 | 0 |" in text and "| bf16 | 0 |" in text and "bf16 - fp32, rotated test, per seed:" in text
    for precision in ("fp32", "bf16"):
        r = json.loads((out / f"gcnn-c4-4-16-rotated-{precision}-seed0" / "result.json").read_text())
        assert r["provenance"]["precision"] == precision and r["n_rotated_test"] == 256
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)  # skips both runs
    assert again.returncode == 0 and "->" not in again.stderr
