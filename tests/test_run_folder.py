"""Run folders (acodm.runfolder): one writer at a time, a failed start leaves nothing, a killed
run's temporaries are removed on resume, a damaged newest checkpoint is skipped, and a run
resumes from any working directory. For ``acodm pretrain`` and ``train-policy`` alike."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from acodm.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from acodm.cli import main
from acodm.config import TrainConfig, debug_cpu
from acodm.data.sampler import SamplerError
from acodm.errors import AcodmError
from acodm.policies.agent import small
from acodm.policies.train import train_policy
from acodm.pretrain import pretrain
from acodm.runfolder import LOCK_FILE, PRETRAIN, RunFolder, RunInUseError, remove_leftovers
from acodm.trainer import Trainer
from tests.fixtures import SimulatedCrash, comparable_metrics, make_text_store


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run-folder") / "store"
    make_text_store(path)
    return path


def cfg(store: Path | str, **kw: Any) -> TrainConfig:
    return debug_cpu(str(store)).replace(**kw)


def _train(store: Path, out: Path, **kw: Any) -> Path:
    """A tiny train-policy run, as in tests/policies/test_train.py (three env steps)."""
    args: dict[str, Any] = {
        "overrides": {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0},
        "interval": 2,
        "agent": small(net_arch=(16,), batch_size=4),
        "progress": False,
    }
    args.update(kw)
    return train_policy(store, out, **args)


def _pretrain_args(run: Path, store: Path | str, *more: str) -> list[str]:
    return ["pretrain", "--out", str(run), "--preset", "debug_cpu", "--store", str(store),
            "--steps", "2", "--quiet", *more]  # fmt: skip


def _crash(config: TrainConfig, run: Path, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrain(config)`` into ``run``, crashing when about to train from ``step``."""
    real = Trainer.train_interval

    def crash(self: Trainer, weights: Any, steps: int | None = None) -> Any:
        if self.step == step:
            raise SimulatedCrash(f"simulated crash at step {step}")
        return real(self, weights, steps)

    monkeypatch.setattr(Trainer, "train_interval", crash)
    with pytest.raises(SimulatedCrash):
        pretrain(config, run, progress=False)
    monkeypatch.setattr(Trainer, "train_interval", real)


# ----------------------------------------------------------------------------- the lock

_HOLDER = """
import sys, time
from acodm.runfolder import PRETRAIN, TRAIN_POLICY, RunFolder
RunFolder(sys.argv[1], {"pretrain": PRETRAIN, "train-policy": TRAIN_POLICY}[sys.argv[2]]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def held(run: Path, command: str = "pretrain") -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``run`` (as ``acodm <command>`` would) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run), command], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_stops_with_a_clear_error_until_the_holder_dies(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with held(run) as holder:
        assert main(_pretrain_args(run, store)) == 2
        err = capsys.readouterr().err
        host = socket.gethostname()
        assert f"{run} is in use by process {holder.pid} on {host} (acodm pretrain)" in err
        assert "wait for it or choose another --out" in err
        assert os.listdir(run) == [LOCK_FILE]  # the second process wrote nothing
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
        assert main(_pretrain_args(run, store)) == 0
    assert not (run / LOCK_FILE).exists()
    with held(run):  # released after the normal end: another process takes it at once
        pass


def test_resuming_a_run_in_use_changes_nothing(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pretrain(cfg(store, steps=2), run, progress=False)

    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}

    before = files()
    with held(run), pytest.raises(RunInUseError, match="acodm pretrain"):
        pretrain(cfg(store, steps=2), run, resume=True, progress=False)
    assert files() == before  # metrics not truncated, config not rewritten


def test_train_policy_takes_the_lock_too(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with held(run, "train-policy"):
        with pytest.raises(RunInUseError, match="acodm train-policy"):
            _train(store, run)
        assert os.listdir(run) == [LOCK_FILE]


def test_a_lock_file_left_by_a_dead_process_is_not_a_lock(store: Path, tmp_path: Path) -> None:
    for run in (tmp_path / "run", tmp_path / "policy-run"):
        run.mkdir()
        (run / LOCK_FILE).write_text('{"pid": 999999, "host": "elsewhere", "command": "x"}\n')
    pretrain(cfg(store, steps=2), tmp_path / "run", progress=False)
    _train(store, tmp_path / "policy-run")  # a lock file alone does not make a folder "used"


@pytest.mark.slow  # two torchrun launches of 2 ranks each: ~20 s on 2 busy cores
def test_under_torchrun_rank_0_alone_locks_and_a_run_in_use_stops_every_rank(
    store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "acodm"]  # fmt: skip
    cmd = [*torchrun, *_pretrain_args(run, store, "--device", "cpu")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with held(run) as holder:  # rank 0 stops before the group forms; torchrun stops rank 1
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert res.returncode != 0
        assert f"{run} is in use by process {holder.pid}" in res.stdout + res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]  # rank 1 never takes rank 0's lock
    assert (run / "summary.json").is_file() and not (run / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- failed starts


@pytest.mark.parametrize("where", ["new", "empty", "nested"])
def test_a_failed_start_leaves_nothing_and_the_corrected_retry_starts(
    store: Path, tmp_path: Path, where: str
) -> None:
    run = tmp_path / "a" / "b" / "run" if where == "nested" else tmp_path / "run"
    if where == "empty":
        run.mkdir()
    # a window longer than a domain's validation split: the step-0 evaluation fails
    with pytest.raises(SamplerError, match="validation tokens"):
        pretrain(cfg(store, seq_len=4096, steps=2), run, progress=False)
    if where == "empty":
        assert os.listdir(run) == []
    else:
        assert not (tmp_path / ("a" if where == "nested" else "run")).exists()
    summary = pretrain(cfg(store, steps=2), run, progress=False)  # no --resume needed
    assert summary["steps"] == 2


def test_a_failed_start_on_the_command_line_then_a_plain_retry(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(_pretrain_args(run, store, "--seq-len", "4096")) == 2
    assert "validation tokens" in capsys.readouterr().err
    assert not run.exists()
    assert main(_pretrain_args(run, store)) == 0


def test_a_failure_after_progress_keeps_the_run(store: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    _crash(cfg(store, steps=6, checkpoint_every=0), run, 4, monkeypatch)  # no checkpoint
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    with pytest.raises(AcodmError, match="no checkpoint yet, so delete it"):
        pretrain(cfg(store, steps=6, checkpoint_every=0), run, progress=False)


def test_a_failed_train_policy_start_leaves_nothing(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    bad = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0, "model": "nope"}
    with pytest.raises(AcodmError, match="neither a preset"):
        _train(store, run, overrides=bad)  # the LM is built at the env's first reset
    assert not run.exists()
    _train(store, run)  # a plain start, no resume


# ----------------------------------------------------------------------------- leftovers


def _make(path: Path, content: str | None = "x") -> Path:
    """A fake temporary: a folder holding a file (``content``) or, with None, a file."""
    if content is None:
        path.write_text("x")
    else:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text(content)
    return path


def test_resume_removes_what_a_killed_run_left(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = cfg(store, steps=4, checkpoint_every=2)
    pretrain(config, run, progress=False)
    ck = run / "checkpoints"
    ours = [
        _make(ck / ".step-00000006.k3j_x9ab.partial"),  # a checkpoint being written
        _make(ck / ".step-00000004.q1w2e3r4.old" / "step-00000004"),  # an overwrite's trash
        _make(run / ".metrics.jsonl.a1b2c3d4.tmp", None),
        _make(run / ".config.json.zz_zzzzz.tmp", None),
    ]
    others = [
        _make(run / "notes.txt", None),
        _make(run / ".mydata.a1b2c3d4.partial"),  # not a name acodm pretrain writes
        _make(ck / ".step-00000006.partial"),  # not tempfile's pattern
        _make(ck / "step-00000004-copy"),
        _make(tmp_path / ".run.a1b2c3d4.partial"),  # outside the run folder
    ]
    pretrain(config, run, resume=True, progress=False)
    assert [p for p in ours if p.exists()] == []
    assert [p for p in others if not p.exists()] == []
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]


def test_train_policy_resume_restores_a_folder_caught_mid_replacement(
    store: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _train(store, run)
    # killed inside atomic_directory(RUN/agent, overwrite=True): the previous checkpoint is
    # parked in .old, the new one (complete or not) in .partial, RUN/agent is missing
    trash = run / ".agent.abcd1234.old"
    trash.mkdir()
    os.replace(run / "agent", trash / "agent")
    partial = _make(run / ".agent.efgh5678.partial", "half")
    policy = _make(run / ".policy.ijkl9012.partial")
    with pytest.warns(UserWarning, match="restored .*agent"):
        _train(store, run, resume=True)
    assert json.loads((run / "agent" / "checkpoint.json").read_text())["num_timesteps"] == 3
    assert not trash.exists() and not partial.exists() and not policy.exists()


def test_a_leftover_link_is_removed_not_followed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    link_target = _make(tmp_path / "elsewhere" / ".step-00000002.abcdefgh.partial")
    (run / "checkpoints" / ".step-00000002.abcdefgh.partial").symlink_to(link_target)
    removed = remove_leftovers(run, PRETRAIN)
    assert [p.name for p in removed] == [".step-00000002.abcdefgh.partial"]
    assert (link_target / "model.safetensors").is_file()  # a link is removed, not followed


def test_run_folder_unit_rules(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(AcodmError, match="no run at"):
        RunFolder(run, PRETRAIN, create=False).acquire()
    assert not run.exists()
    run.mkdir()
    (run / "config.json").write_text("{}")  # existed before: a failed start keeps it
    with pytest.raises(RuntimeError), RunFolder(run, PRETRAIN):
        (run / "metrics.jsonl").write_text('{"step": 0}\n')
        raise RuntimeError("fails at start-up")
    assert sorted(os.listdir(run)) == ["config.json"]
    folder = RunFolder(run, PRETRAIN).acquire()
    with pytest.raises(RunInUseError, match=f"process {os.getpid()}"):
        RunFolder(run, PRETRAIN).acquire()  # a second holder in the same process, too
    folder.release()
    folder.release()  # idempotent


def test_a_failing_clean_up_does_not_keep_the_lock(tmp_path: Path, monkeypatch) -> None:
    def broken(*args: Any) -> None:
        raise PermissionError("cannot remove")

    monkeypatch.setattr("acodm.runfolder.remove_leftovers", broken)
    with pytest.raises(PermissionError), RunFolder(tmp_path / "run", PRETRAIN):
        pass
    monkeypatch.undo()
    RunFolder(tmp_path / "run", PRETRAIN).acquire().release()  # the lock was released


# ----------------------------------------------------------------------------- damaged checkpoints


def _damage(ckpt: Path, what: str) -> None:
    if what == "model":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    else:
        (ckpt / "state.json").write_text('{"step": 4, "sampler": ')


EXACT = {"steps": 8, "checkpoint_every": 2, "eval_every": 4, "mixer": "odm:warmup=0.2"}


@pytest.fixture(scope="module")
def full(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run-folder") / "full"
    pretrain(cfg(store, **EXACT), out, progress=False)
    torch.set_num_threads(old)
    return out


@pytest.mark.parametrize("what", ["model", "state"])
def test_resume_skips_a_damaged_newest_checkpoint_and_stays_exact(
    store: Path, full: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    cut = tmp_path / "cut"
    _crash(cfg(store, **EXACT), cut, 7, monkeypatch)
    newest = latest_checkpoint(cut)
    assert newest is not None and newest.name == "step-00000006"  # keep_last = 2: 4 and 6
    _damage(newest, what)
    older = re.escape(str(cut / "checkpoints" / "step-00000004"))
    with pytest.warns(UserWarning, match=rf"resuming from {older} .*{re.escape(str(newest))}"):
        pretrain(cfg(store, **EXACT), cut, resume=True, progress=False)
    assert comparable_metrics(cut) == comparable_metrics(full)


def test_resume_with_every_checkpoint_damaged_names_them_and_the_fix(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cut = tmp_path / "cut"
    _crash(cfg(store, **EXACT), cut, 7, monkeypatch)
    for ckpt, what in zip(list_checkpoints(cut), ["model", "state"], strict=True):
        _damage(ckpt, what)
    with pytest.raises(CheckpointError) as err:
        pretrain(cfg(store, **EXACT), cut, resume=True, progress=False)
    assert "step-00000004" in str(err.value) and "step-00000006" in str(err.value)
    assert "Delete the damaged step-* folders" in str(err.value)
    assert main(["pretrain", "--out", str(cut), "--resume", "--quiet"]) == 2
    assert "no intact checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- paths


def test_resume_from_another_working_directory(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    monkeypatch.chdir(store.parent)
    assert main(_pretrain_args(run, store.name)) == 0  # the store named relative to here
    conf_path = run / "config.json"
    assert json.loads(conf_path.read_text())["train"]["store"] == str(store.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet"]) == 0
    # a run of an earlier version: train.store relative to the directory it started in
    conf = json.loads(conf_path.read_text())
    conf["train"]["store"] = store.name
    conf_path.write_text(json.dumps(conf))
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet"]) == 0
    pretrain(cfg(store, steps=2), run, resume=True, progress=False)  # the API, absolute store


def test_resume_without_a_run_says_so(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "nothing"
    assert main(_pretrain_args(run, store, "--resume")) == 2
    assert f"no run at {run} (no config.json): start it without --resume" in (
        capsys.readouterr().err
    )
    assert not run.exists()


def test_train_policy_resumes_from_another_working_directory(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    monkeypatch.chdir(store.parent)
    _train(Path(store.name), run)
    conf_path = run / "config.json"
    assert json.loads(conf_path.read_text())["proxy"]["store"] == str(store.resolve())
    monkeypatch.chdir(tmp_path)
    _train(store, run, resume=True)  # the same store, named from here
    # a run of an earlier version (store relative to its start) resumes from that directory
    conf = json.loads(conf_path.read_text())
    conf["proxy"]["store"] = store.name
    conf_path.write_text(json.dumps(conf))
    monkeypatch.chdir(store.parent)
    _train(Path(store.name), run, resume=True)
