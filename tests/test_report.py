"""Run comparison (steps to reach a baseline's best) and plots, on hand-made metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acodm.cli import main
from acodm.errors import AcodmError
from acodm.plots import plot_validation, plot_weights
from acodm.report import (
    compare,
    format_comparison,
    load_curves,
    run_mismatches,
    steps_to_reach,
)


def write_run(folder: Path, ppl: list[float], weights: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = []
    for i, p in enumerate(ppl):
        step = 10 * i
        lines.append({"step": step, "mix/weight/a": weights[0], "mix/weight/b": weights[1]})
        lines.append(
            {
                "step": step,
                "eval/ppl_mean": p,
                "eval/ppl_worst": 2 * p,
                "eval/ppl/a": p * 0.5,
                "eval/ppl/b": p * 1.5,
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


@pytest.fixture
def runs(tmp_path):
    return {
        "policy": write_run(tmp_path / "policy", [100, 50, 30, 20], [0.7, 0.3]),
        "uniform": write_run(tmp_path / "uniform", [100, 60, 40, 30], [0.5, 0.5]),
        "slow": write_run(tmp_path / "slow", [100, 90, 80, 70], [0.5, 0.5]),
    }


def test_steps_to_reach_and_comparison(runs):
    curves = {n: load_curves(n, p) for n, p in runs.items()}
    assert steps_to_reach(curves["policy"], 30.0) == 20
    assert steps_to_reach(curves["slow"], 30.0) is None
    result = compare(curves)
    assert result["policy"]["steps_to_reach"] == {"uniform": 20, "slow": 10}
    assert result["uniform"]["steps_to_reach"] == {"policy": None, "slow": 10}
    assert result["policy"]["final_ppl"] == {"a": 10.0, "b": 30.0}
    assert result["uniform"]["steps_to_best"] == 30 and result["slow"]["steps_to_best"] == 30
    text = format_comparison(curves, focus="policy")
    assert "reached uniform's best perplexity (30.00) at step 20 vs 30 (+33% steps saved)" in text
    text = format_comparison(curves, focus="slow")
    assert "slow did NOT reach policy's best perplexity" in text


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(AcodmError, match="did the run finish"):
        load_curves("x", tmp_path)


def test_plots_are_written(runs, tmp_path):
    w = plot_weights(runs["policy"], tmp_path / "plots" / "w.png")
    v = plot_validation(runs, tmp_path / "plots" / "v.png")
    for png in (w, v):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plots_have_integer_step_ticks(tmp_path, monkeypatch):
    """A short run (steps 0..5) would get ticks 0, 0.5, 1, ... without the integer locator."""
    from acodm import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or save(fig, out))
    short = write_run(tmp_path / "short", [100, 80, 60], [0.6, 0.4])
    lines = [json.dumps({"step": i, "rl/reward": 0.1 * i}) for i in range(6)]
    (short / "metrics.jsonl").write_text(
        (short / "metrics.jsonl").read_text() + "\n".join(lines) + "\n"
    )
    plots.plot_weights(short, tmp_path / "w.png")
    plots.plot_validation({"short": short}, tmp_path / "v.png")
    plots.plot_reward(short, tmp_path / "r.png")
    assert len(figures) == 3
    for fig in figures:
        ticks = fig.axes[0].get_xticks()
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_compare_cli(runs, tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                *map(str, runs.values()),
                "--focus",
                "policy",
                "--plots",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "reaches uniform's best at" in out and "steps saved" in out
    assert (tmp_path / "p" / "validation.png").is_file()


def _config(folder: Path, *, model: str = "14m", corpus: str = "c1", steps: int = 30) -> None:
    cfg = {
        "train": {"model": model, "store": "/somewhere"},
        "store": {"corpus_hash": corpus, "tokenizer_sha256": "t1", "domains": ["a", "b"]},
        "total_steps": steps,
        "tokens_per_step": 2048,
    }
    (folder / "config.json").write_text(json.dumps(cfg))


def test_compare_warns_when_runs_differ(runs, capsys):
    for folder in runs.values():
        _config(folder)
    assert run_mismatches(runs) == []
    _config(runs["slow"], model="70m", corpus="c2", steps=60)
    warnings = run_mismatches(runs)
    assert len(warnings) == 3
    assert "models (policy: 14m, uniform: 14m, slow: 70m)" in warnings[0]
    assert "stores" in warnings[1] and "c2" in warnings[1]
    assert "token budgets (policy: 61440, uniform: 61440, slow: 122880)" in warnings[2]
    assert main(["compare", *map(str, runs.values())]) == 0
    err = capsys.readouterr().err
    assert err.count("acodm: warning:") == 3 and "unfair" in err
    (runs["slow"] / "config.json").unlink()
    assert run_mismatches(runs) == [
        "run 'slow' has no config.json: its model, store and budget are unknown"
    ]


def test_study_aggregates_seeds(runs, tmp_path):
    from acodm.policies.quickstart import aggregate, format_study

    one = compare({n: load_curves(n, p) for n, p in runs.items()})
    other = {
        "policy": write_run(tmp_path / "p2", [100, 80, 50, 45], [0.7, 0.3]),
        "uniform": write_run(tmp_path / "u2", [100, 60, 40, 35], [0.5, 0.5]),
        "slow": write_run(tmp_path / "s2", [100, 90, 80, 40], [0.5, 0.5]),
    }
    two = compare({n: load_curves(n, p) for n, p in other.items()})
    result = aggregate({0: one, 1: two})
    final = result["runs"]["policy"]["final_ppl_mean"]
    assert final["mean"] == pytest.approx(32.5) and final["min"] == 20 and final["max"] == 45
    assert final["stdev"] == pytest.approx(17.6776695, rel=1e-6)
    assert result["against"]["uniform"]["wins"] == 1  # 20 < 30, but 45 > 35
    assert result["against"]["slow"]["wins"] == 1  # 20 < 70, but 45 > 40
    assert result["against"]["uniform"]["focus_steps_to_reach"] == [20, None]
    assert result["against"]["uniform"]["own_steps_to_best"] == [30, 30]
    text = format_study(result)
    assert "policy beat uniform on 1 of 2 seeds" in text and "20/30, never/30" in text
    with pytest.raises(AcodmError, match="not among"):
        aggregate({0: one}, focus="nope")
