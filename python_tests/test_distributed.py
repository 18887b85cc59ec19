"""Multi-node DDP and lost ranks, through the command line under ``torchrun`` on this machine.

* Two ``torchrun --nnodes 2 --node-rank {0,1} --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`` launches,
  one process each, train to the same float64 weights as one process with the same global batch (1e-9).
* A rank that is killed (SIGKILL) or hangs (SIGSTOP) mid-run ends the job: the surviving rank fails with a
  one-line error naming itself, the cause and the process-group timeout (``GCONV_EXT_DIST_TIMEOUT``, 5 s
  here) and the checkpoint to resume from, within a bounded time; ``--resume`` in one process then finishes
  the run from that checkpoint.

Every process a test starts carries a unique token in its environment; the ``finally`` of each test kills
those processes (the torchrun agents start their workers in sessions of their own, so killing the agents'
process groups is not enough) and the test checks that none is left. Linux only (the workers are found
through /proc).

The single-node 2-process DDP run is tested in test_train.py (``test_ddp_two_processes_equal_single_process``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from gconv_ext.cli import main
from gconv_ext.train import load_checkpoint
from gconv_ext.train.distributed import (
    PROCESS_GROUP_TIMEOUT_S,
    DistContext,
    DistributedError,
    is_communication_error,
    lost_peer_error,
    process_group_timeout,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN_VAR = "GCONV_EXT_TEST_JOB"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not torch.distributed.is_available(),
                                reason="needs torch.distributed and Linux /proc")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data_dir: Path, out_dir: Path, epochs: int) -> list[str]:
    # 225 = 7 full global batches of 32 + one of a single digit: the ranks get 16/16 and then 1/0 digits.
    return ["--model", "cnn", "--preset", "tiny", "--epochs", str(epochs), "--batch-size", "32",
            "--train-limit", "225", "--val-limit", "128", "--train-rotation", "uniform", "--device", "cpu",
            "--threads", "1", "--precision", "fp64", "--data-dir", str(data_dir), "--no-test", "--quiet",
            "--out-dir", str(out_dir)]


def test_process_group_timeout_setting(monkeypatch, tmp_path, shared_data_dir, capsys):
    monkeypatch.delenv("GCONV_EXT_DIST_TIMEOUT", raising=False)
    assert process_group_timeout() == PROCESS_GROUP_TIMEOUT_S == 600
    monkeypatch.setenv("GCONV_EXT_DIST_TIMEOUT", "2.5")
    assert process_group_timeout() == 2.5
    for bad in ("abc", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("GCONV_EXT_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match="GCONV_EXT_DIST_TIMEOUT must be a positive number of seconds"):
            process_group_timeout()
    # the command line says so in one line before it loads anything
    with pytest.raises(SystemExit) as exc:
        main(["train", *_train_args(shared_data_dir, tmp_path / "run", epochs=1)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("error: GCONV_EXT_DIST_TIMEOUT must be a positive number of seconds, "
                                       "got 'nan'\n")
    assert not (tmp_path / "run").exists()


def test_lost_peer_errors_are_recognised_and_explained(tmp_path):
    gloo_reset = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                              "[127.0.0.1]:19689: Connection reset by peer. This is typically caused by ...")
    gloo_timeout = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                                "Timed out waiting 5000ms for recv operation to complete")
    for exc in (gloo_reset, gloo_timeout, torch.distributed.DistBackendError("NCCL communicator was aborted")):
        assert is_communication_error(exc), exc
    for exc in (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("Timed out waiting"),
                DistributedError("already explained")):
        assert not is_communication_error(exc), exc
    ctx = DistContext(1, 4, 1, torch.device("cpu"), timeout_s=30.0)
    msg = str(lost_peer_error(gloo_timeout, ctx, tmp_path / "last.pt"))
    assert msg.startswith("rank 1 of 4 lost contact with the other ranks: one of them died, or did not answer "
                          "within the process-group timeout of 30 s (GCONV_EXT_DIST_TIMEOUT) [RuntimeError: ")
    assert "Timed out waiting 5000ms" in msg and msg.endswith("no checkpoint was written yet: start the run again")
    (tmp_path / "last.pt").write_bytes(b"x")
    msg = str(lost_peer_error(gloo_reset, ctx, tmp_path / "last.pt"))
    assert "Connection reset by peer" in msg and "\n" not in msg
    assert msg.endswith(f"the last checkpoint is {tmp_path / 'last.pt'}: run the same command with --resume to "
                        "continue from it")


class TwoNodeJob:
    """Two torchrun agents on this machine (``--nnodes 2``, one worker each, c10d rendezvous on
    127.0.0.1:<free port>, node 0 hosting the rendezvous store), their output in ``log_dir/node{0,1}.log``."""

    def __init__(self, train_args: list[str], log_dir: Path, **env: str):
        self.token = uuid.uuid4().hex
        base = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        self.env = dict(base, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        OMP_NUM_THREADS="1", **{TOKEN_VAR: self.token}, **env)
        port = _free_port()
        self.logs = [log_dir / f"node{r}.log" for r in (0, 1)]
        self.agents: list[subprocess.Popen] = []
        try:
            for r in (0, 1):
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                       "--node-rank", str(r), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                       "--rdzv-id", self.token, "--rdzv-conf", f"is_host={'true' if r == 0 else 'false'}",
                       "-m", "gconv_ext", "train", *train_args]
                with open(self.logs[r], "w") as log:
                    self.agents.append(subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True))
        except BaseException:
            self.kill()
            raise

    def processes(self) -> dict[int, dict[str, str]]:
        """pid -> environment of every live process of this job (agents and workers; not zombies)."""
        found = {}
        marker = f"{TOKEN_VAR}={self.token}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            items = raw.split(b"\0")
            if marker in items:
                found[int(entry)] = dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)
        return found

    def workers(self) -> dict[int, int]:
        """rank -> pid of the live workers."""
        return {int(env["RANK"]): pid for pid, env in self.processes().items() if "RANK" in env}

    def agent_of(self, pid: int) -> subprocess.Popen:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        return next(a for a in self.agents if a.pid == ppid)

    def output(self, agent: subprocess.Popen) -> str:
        return self.logs[self.agents.index(agent)].read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL every process of the job (only those carrying its token), then reap the agents."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
            agent.wait(timeout=30)
        deadline = time.monotonic() + 10  # the orphaned workers' zombies are reaped by init
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)


def test_two_nodes_equal_single_process(tmp_path, shared_data_dir):
    """The multi-node path (c10d rendezvous, one process per node) equals one process, in float64.

    Each gradient entry of the 2-process run is the all-reduced sum of two half-batch sums, of the 1-process
    run one full-batch sum: the same terms added in another order, so they differ by a few ulps of the sum of
    |terms| (float64: ~1e-15 relative to the gradient scale), and AdamW passes a relative gradient error
    through unamplified (or divides an absolute one by eps = 1e-8 where the gradient is itself rounding
    noise). Over 16 steps the weights stay within ~1e-10 of each other, while a wrong shard, a wrong loss
    scale or a rank training alone moves them by ~1e-2: the 1e-9 bound tells them apart (the same argument as
    the single-node test in test_train.py). Measured on a Xeon: 5.6e-17 apart; one process with batch 16
    instead of 32 (what a rank training on its half alone would do) lands 4.1e-2 away."""
    job = TwoNodeJob(_train_args(shared_data_dir, tmp_path / "nodes", epochs=2), tmp_path)
    try:
        for agent in job.agents:
            agent.wait(timeout=240)
    finally:
        job.kill()
    for agent in job.agents:
        assert agent.returncode == 0, job.output(agent)[-3000:]
    assert not job.processes()
    assert main(["train", *_train_args(shared_data_dir, tmp_path / "single", epochs=2)]) == 0
    nodes = load_checkpoint(tmp_path / "nodes" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    assert nodes["epoch"] == single["epoch"] == 2
    for key, value in single["model"].items():
        assert value.dtype == torch.float64, key
        torch.testing.assert_close(nodes["model"][key], value, rtol=0, atol=1e-9, msg=lambda m, key=key: f"{key}: {m}")
    assert json.loads((tmp_path / "nodes" / "summary.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["world_size"] == 1


# How long the surviving rank may take to end the job after its peer is lost: the process-group timeout
# (5 s, set below; a killed peer's closed connection is seen at once), at most one epoch (~1 s) until the
# survivor reaches its next collective, torchrun noticing its worker's exit, and slack for a loaded machine.
# Without the timeout a hung peer would keep the survivor waiting forever (gloo's default: 30 min).
DIST_TIMEOUT_S = 5
END_BOUND_S = 60


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_lost_rank_ends_the_job_and_resume_continues(tmp_path, shared_data_dir, how):
    epochs = 10
    out = tmp_path / "run"
    args = _train_args(shared_data_dir, out, epochs)
    job = TwoNodeJob(args, tmp_path, GCONV_EXT_DIST_TIMEOUT=str(DIST_TIMEOUT_S))
    try:
        deadline = time.monotonic() + 180
        while not (out / "last.pt").exists():  # epoch 1 is done and saved; 9 more to go
            assert time.monotonic() < deadline, "no checkpoint: " + job.output(job.agents[0])[-3000:]
            assert all(a.poll() is None for a in job.agents), job.output(job.agents[0])[-3000:]
            time.sleep(0.05)
        workers = job.workers()
        assert sorted(workers) == [0, 1], workers
        survivor, victim = job.agent_of(workers[0]), job.agent_of(workers[1])
        assert survivor is not victim  # one worker per node
        os.kill(workers[1], signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        lost = time.monotonic()
        try:
            survivor.wait(timeout=END_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still runs {END_BOUND_S} s after rank 1 was lost ({how}): a hang")
        took = time.monotonic() - lost
        if how == "hang":  # the stopped worker is ended by hand (torchrun waits for a stopped worker)
            os.kill(workers[1], signal.SIGKILL)
        victim.wait(timeout=END_BOUND_S)
    finally:
        job.kill()
    assert not job.processes(), "stray processes"

    text = job.output(survivor)
    assert survivor.returncode != 0 and victim.returncode != 0, text[-3000:]
    assert took < END_BOUND_S
    assert (f"error: rank 0 of 2 lost contact with the other ranks: one of them died, or did not answer within "
            f"the process-group timeout of {DIST_TIMEOUT_S} s (GCONV_EXT_DIST_TIMEOUT)") in text, text[-3000:]
    assert f"the last checkpoint is {out / 'last.pt'}: run the same command with --resume" in text
    if how == "hang":  # only the timeout can end this one: the stopped peer's connection stays open
        assert "Timed out" in text and took >= DIST_TIMEOUT_S - 0.5, (took, text[-3000:])
    else:
        assert "SIGKILL" in job.output(victim)  # torchrun's report of the killed worker

    saved = load_checkpoint(out / "last.pt")
    assert 1 <= saved["epoch"] < epochs and not (out / "summary.json").exists()  # interrupted mid-run
    assert main(["train", *args, "--resume"]) == 0  # one process now, the same global batch
    final = load_checkpoint(out / "last.pt")
    assert final["epoch"] == epochs and len(final["history"]) == epochs
    assert [r["epoch"] for r in final["history"]] == list(range(1, epochs + 1))
    assert final["history"][: saved["epoch"]] == saved["history"]  # the epochs before the loss are kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == epochs and summary["world_size"] == 1
