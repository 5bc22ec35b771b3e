"""Smoke tests of every CLI command on tiny inputs (the same paths a user types)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from acodm import __version__
from acodm.cli import main


@pytest.fixture(scope="module")
def corpus_jsonl(tmp_path_factory):
    from tests.fixtures import synthetic_corpus

    folder = tmp_path_factory.mktemp("cli")
    corpus = synthetic_corpus(folder / "src-corpus", docs_per_domain=20)
    lines = []
    for f in sorted(corpus.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            lines.append(json.dumps({"text": rec["text"], "meta": {"set": rec["domain"]}}))
    path = folder / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_prepare_info_pretrain_resume(corpus_jsonl, tmp_path, capsys):
    corpus, store, run = tmp_path / "corpus", tmp_path / "store", tmp_path / "run"
    assert (
        main(
            [
                "corpus",
                "import",
                str(corpus_jsonl),
                "--out",
                str(corpus),
                "--domain-field",
                "meta.set",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "numbers" in out and "prose" in out and "code" in out

    assert (
        main(
            [
                "prepare",
                str(corpus),
                "--out",
                str(store),
                "--vocab-size",
                "400",
                "--min-val-tokens",
                "300",
                "--val-fraction",
                "0.1",
                "--min-reward-tokens",
                "300",
                "--quiet",
            ]
        )
        == 0
    )
    assert "train tokens" in capsys.readouterr().out
    assert main(["info", str(store)]) == 0
    assert "vocab 400" in capsys.readouterr().out

    assert (
        main(
            [
                "pretrain",
                "--preset",
                "debug_cpu",
                "--store",
                str(store),
                "--out",
                str(run),
                "--steps",
                "3",
                "--mixer",
                "temperature:0.5",
                "--quiet",
            ]
        )
        == 0
    )
    assert "eval/ppl_mean" in capsys.readouterr().out
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["steps"] == 3 and conf["mixer"] == "temperature:0.5"
    # --resume needs no other flag: everything comes from the run's config.json
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet"]) == 0


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and "acodm corpus build" in err
    assert not (tmp_path / "s").exists()
    assert main(["pretrain", "--preset", "debug_cpu", "--out", str(tmp_path / "r")]) == 2
    assert "--store is required" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "acodm", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"acodm {__version__}"


def test_train_policy_export_pretrain_with_actor_compare(tmp_path, capsys):
    from tests.fixtures import make_text_store

    store, proxy = tmp_path / "store", tmp_path / "proxy"
    make_text_store(store)
    assert (
        main(
            [
                "train-policy",
                "--store",
                str(store),
                "--out",
                str(proxy),
                "--proxy",
                "debug_cpu",
                "--steps",
                "12",
                "--interval",
                "2",
                "--gradient-steps",
                "3",
                "--gamma",
                "0.5",
                "--critics",
                "3",
                "--pessimism",
                "0.5",
                "--plot",
                "--quiet",
            ]
        )
        == 0
    )
    assert (proxy / "policy" / "actor.safetensors").is_file()
    agent = json.loads((proxy / "config.json").read_text())["agent"]
    assert (agent["gradient_steps"], agent["gamma"]) == (3, 0.5)
    assert (agent["critics"], agent["pessimism"]) == (3, 0.5)
    assert (proxy / "learning_curve.png").is_file()
    bad = ["train-policy", "--store", str(store), "--out", str(tmp_path / "bad"), "--quiet"]
    assert main([*bad, "--gradient-steps", "-1"]) == 2
    assert "gradient_steps" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*bad, "--gamma", "1.5"]) == 2
    assert "gamma" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*bad, "--pessimism", "1"]) == 2  # needs --critics >= 2
    assert "critics >= 2" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*bad, "--steps", "8", "--episode-steps", "6"]) == 2
    assert "not both" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["export", str(proxy), "--out", str(tmp_path / "again")]) == 0
    compute = json.loads((proxy / "policy" / "policy.json").read_text())["extra"]["compute"]
    again = json.loads((tmp_path / "again" / "policy.json").read_text())["extra"]
    assert again["compute"] == compute and compute["tokens"] > 0  # a re-export keeps it
    assert main(["export", str(proxy)]) == 2  # README's form: RUN/policy exists already
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(proxy), "--overwrite"]) == 0
    assert (tmp_path / "again" / "actor.safetensors").read_bytes() == (
        proxy / "policy" / "actor.safetensors"
    ).read_bytes()
    runs = []
    for name, mixer in (("policy", f"actor:{proxy / 'policy'}"), ("uniform", "uniform")):
        runs.append(str(tmp_path / name))
        assert (
            main(
                [
                    "pretrain",
                    "--preset",
                    "debug_cpu",
                    "--store",
                    str(store),
                    "--out",
                    runs[-1],
                    "--mixer",
                    mixer,
                    "--model",
                    "14m",
                    "--steps",
                    "4",
                    "--interval",
                    "2",
                    "--quiet",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert main(["compare", *runs, "--focus", "policy"]) == 0
    assert "uniform's best" in capsys.readouterr().out


def test_annotate_command(tmp_path, capsys):
    from tests.fixtures import make_text_store

    store = tmp_path / "store"
    make_text_store(store)
    assert main(["annotate", str(store), "--reference", "prose", "--topics", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mean quality" in out and "numbers" in out
    assert (store / "annotations" / "annotations.safetensors").is_file()
    assert main(["annotate", str(store)]) == 2  # no default reference domain in this store
    assert "reference" in capsys.readouterr().err
