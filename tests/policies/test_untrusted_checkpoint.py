"""Agent checkpoints are SB3 pickle: a folder from someone else must never run its code.

The attack: a run folder whose ``agent/agent.zip`` (SB3's format: a zip whose ``data`` JSON
holds cloudpickle'd entries) or ``agent/replay_buffer.pkl`` (plain pickle) carries a payload
that creates a marker file when unpickled. ``test_the_payloads_run_when_unpickled`` shows each
crafted file does run its payload through SB3's own loaders; the other tests show that acodm
never gets there: ``export`` reads the pickle-free actor copy, ``train-policy --resume``
refuses a checkpoint this user's acodm did not sign unless ``--trust-pickle`` is given.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import pickle
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acodm.cli import main
from acodm.errors import AcodmError
from acodm.policies.agent import AgentConfig, small
from acodm.policies.export import ACTOR_FILE, SPEC_FILE, MixingPolicy
from acodm.policies.train import export_from_checkpoint, train_policy
from tests.fixtures import make_text_store

OVERRIDES = {"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0}


def _agent() -> AgentConfig:
    return small(net_arch=(16,), batch_size=4)


def _train(store: Path, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "overrides": OVERRIDES,
        "interval": 2,
        "agent": _agent(),
        "progress": False,
    }
    args.update(kw)
    return train_policy(store, out, **args)


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: arbitrary code, harmless here."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def craft_agent_zip(path: Path, marker: Path) -> None:
    """Rewrite an SB3 ``agent.zip`` so that loading its ``data`` entry runs the payload.

    SB3's ``json_to_data`` base64-decodes and ``cloudpickle.loads`` every ``data`` value of the
    form ``{":serialized:": ...}``; the payload replaces ``observation_space``.
    """
    with zipfile.ZipFile(path) as src:
        entries = {name: src.read(name) for name in src.namelist()}
    data = json.loads(entries["data"])
    blob = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    data["observation_space"] = {":serialized:": blob}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as dst:
        for name, content in entries.items():
            dst.writestr(name, content)


def craft_replay_buffer(path: Path, marker: Path) -> None:
    """Replace SB3's ``replay_buffer.pkl`` (``pickle.load`` on resume) by the payload."""
    path.write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("untrusted") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("untrusted") / "run"
    _train(store, out)
    torch.set_num_threads(old)
    yield out


CLI_TRAIN = ["--steps", "8", "--interval", "2", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run made by ``acodm train-policy`` (its settings are the CLI's, for --resume)."""
    out = tmp_path_factory.mktemp("untrusted") / "cli-run"
    assert main(["train-policy", "--store", str(store), "--out", str(out), *CLI_TRAIN]) == 0
    return out


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_the_payloads_run_when_unpickled(run: Path, tmp_path: Path) -> None:
    """The crafted files are real exploits: SB3's own loaders run them."""
    from stable_baselines3.common.save_util import load_from_pkl, load_from_zip_file

    bad = copy_run(run, tmp_path / "bad")
    marker = tmp_path / "pwned"
    craft_agent_zip(bad / "agent" / "agent.zip", marker)
    load_from_zip_file(bad / "agent" / "agent.zip", device="cpu")
    assert marker.exists()
    marker.unlink()
    craft_replay_buffer(bad / "agent" / "replay_buffer.pkl", marker)
    load_from_pkl(bad / "agent" / "replay_buffer.pkl")
    assert marker.exists()


def test_export_never_unpickles_the_checkpoint(run: Path, tmp_path: Path) -> None:
    bad = copy_run(run, tmp_path / "bad")
    marker = tmp_path / "pwned"
    craft_agent_zip(bad / "agent" / "agent.zip", marker)
    craft_replay_buffer(bad / "agent" / "replay_buffer.pkl", marker)
    out = export_from_checkpoint(bad, tmp_path / "exported")
    assert not marker.exists()
    assert (out / ACTOR_FILE).read_bytes() == (run / "policy" / ACTOR_FILE).read_bytes()
    assert MixingPolicy.load(out).domains == MixingPolicy.load(run / "policy").domains
    assert main(["export", str(bad), "--out", str(tmp_path / "cli")]) == 0
    assert not marker.exists()
    assert (tmp_path / "cli" / ACTOR_FILE).read_bytes() == (out / ACTOR_FILE).read_bytes()


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("crafted", ["agent.zip", "replay_buffer.pkl"])
def test_resume_refuses_a_crafted_checkpoint(
    run: Path, store: Path, tmp_path: Path, crafted: str
) -> None:
    bad = copy_run(run, tmp_path / "bad")
    marker = tmp_path / "pwned"
    craft = craft_agent_zip if crafted == "agent.zip" else craft_replay_buffer
    craft(bad / "agent" / crafted, marker)
    before = _files(bad)
    with pytest.raises(AcodmError, match=rf"{crafted}.*changed.*--trust-pickle"):
        _train(store, bad, resume=True)
    assert not marker.exists()
    assert _files(bad) == before  # refused before anything was written


def test_cli_resume_refuses_a_crafted_checkpoint(
    cli_run: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = copy_run(cli_run, tmp_path / "bad")
    marker = tmp_path / "pwned"
    craft_agent_zip(bad / "agent" / "agent.zip", marker)
    before = _files(bad)
    capsys.readouterr()
    resume = ["train-policy", "--store", str(store), "--out", str(bad), *CLI_TRAIN, "--resume"]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and "changed" in err and "--trust-pickle" in err
    assert not marker.exists() and _files(bad) == before
    # the user's own CLI run resumes without the flag (a finished run: a plain re-export)
    assert (
        main(["train-policy", "--store", str(store), "--out", str(cli_run), *CLI_TRAIN, "--resume"])
        == 0
    )


def test_resume_refuses_a_checkpoint_signed_by_another_user(
    run: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone else's genuine run (their key, not ours): refused unless trusted explicitly."""
    theirs = copy_run(run, tmp_path / "theirs")
    monkeypatch.setenv("ACODM_CONFIG", str(tmp_path / "another-user"))
    with pytest.raises(AcodmError, match=r"another acodm key.*--trust-pickle"):
        _train(store, theirs, resume=True)
    out = _train(store, theirs, resume=True, trust_pickle=True)  # a finished run: re-export
    assert (out / ACTOR_FILE).read_bytes() == (run / "policy" / ACTOR_FILE).read_bytes()


def test_resume_refuses_an_unsigned_checkpoint(run: Path, store: Path, tmp_path: Path) -> None:
    """A checkpoint without the signature (an older acodm, or a hand-made folder)."""
    old = copy_run(run, tmp_path / "old")
    meta_path = old / "agent" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["signature"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AcodmError, match=r"no acodm signature.*--trust-pickle"):
        _train(store, old, resume=True)
    # a forged signature with this user's key id but a made-up MAC is refused too
    meta["signature"] = {**json.loads((run / "agent" / "checkpoint.json").read_text())["signature"]}
    meta["signature"]["hmac"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AcodmError, match=r"signature does not match.*--trust-pickle"):
        _train(store, old, resume=True)


def test_checkpoint_without_the_actor_copy(run: Path, tmp_path: Path) -> None:
    """A checkpoint of an older acodm: export says so; with trust_pickle it reads agent.zip,
    and that SB3 path gives the same bytes as the pickle-free one."""
    old = copy_run(run, tmp_path / "old")
    for name in ("actor.safetensors", "actor.json"):
        (old / "agent" / name).unlink()
    with pytest.raises(AcodmError, match=r"predates pickle-free export.*--trust-pickle"):
        export_from_checkpoint(old, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    out = export_from_checkpoint(old, tmp_path / "sb3", trust_pickle=True)
    fresh = export_from_checkpoint(run, tmp_path / "pickle-free")
    assert (out / ACTOR_FILE).read_bytes() == (fresh / ACTOR_FILE).read_bytes()
    spec, fresh_spec = (json.loads((p / SPEC_FILE).read_text()) for p in (out, fresh))
    assert spec == fresh_spec  # the same policy.json, hashes included
    assert main(["export", str(old), "--out", str(tmp_path / "cli")]) == 2


def test_the_key_is_private_and_outside_the_run(run: Path, tmp_path: Path) -> None:
    from acodm.trust import KEY_FILE, TrustError, config_dir, user_key

    key = config_dir() / KEY_FILE
    assert key.is_file() and not key.is_relative_to(run)
    if os.name == "posix":
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        key.chmod(0o644)
        try:
            with pytest.raises(TrustError, match="chmod 600"):
                user_key()
        finally:
            key.chmod(0o600)
    assert user_key() == user_key()


def test_an_unusable_key_folder_fails_before_training(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acodm.trust import TrustError

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ACODM_CONFIG", str(tmp_path / "a-file" / "acodm"))
    with pytest.raises(TrustError, match=r"cannot read or create the checkpoint key.*ACODM_CONFIG"):
        _train(store, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_config_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from acodm.trust import config_dir

    monkeypatch.setenv("ACODM_CONFIG", str(tmp_path / "a"))
    assert config_dir() == tmp_path / "a"
    monkeypatch.delenv("ACODM_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "acodm"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "acodm"


def test_the_commands_that_unpickle_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train-policy", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-pickle" in text and "pickle" in text.replace("--trust-pickle", "")
