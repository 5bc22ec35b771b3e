"""``acodm study``: arm specs, report math by hand, paired seeds, resume, clear errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from acodm.cli import main
from acodm.errors import AcodmError
from acodm.study import (
    Arm,
    StudyError,
    StudyPlan,
    _run_job,
    execute,
    parse_arms,
    parse_seeds,
    policy_flops,
    report,
    study,
)
from acodm.study_report import (
    RunResult,
    format_summary,
    paired_difference,
    recipe_groups,
    separation,
    summarize,
    t975,
)
from tests.fixtures import make_text_store

# every run of the integration tests: the micro model, 6 steps of 4 x 32 tokens
SMALL = {
    "seq_len": 32,
    "micro_batch_size": 4,
    "steps": 6,
    "interval": 3,
    "warmup_steps": 1,
    "eval_every": 3,
    "eval_windows": 4,
    "checkpoint_every": 3,
}


# -- report math ----------------------------------------------------------------------------


def test_paired_difference_and_t_interval_by_hand() -> None:
    p = paired_difference([1.0, 2.0, 4.0], [0.5, 1.5, 2.5])
    # d = 0.5, 0.5, 1.5: mean 5/6, sd sqrt(1/3), half-width t(2) * sd / sqrt(3) = 4.3027 / 3
    assert p["differences"] == [0.5, 0.5, 1.5]
    assert p["mean"] == pytest.approx(5 / 6)
    assert p["sd"] == pytest.approx(math.sqrt(1 / 3))
    assert p["ci95"] == pytest.approx([5 / 6 - 4.3027 / 3, 5 / 6 + 4.3027 / 3])
    assert (p["wins"], p["losses"], p["ties"]) == (0, 3, 0)
    one = paired_difference([1.0], [2.0])
    assert one["sd"] is None and one["ci95"] is None and one["wins"] == 1
    assert t975(4) == 2.7764 and t975(30) == 2.0423
    assert t975(40) == pytest.approx(2.0211, abs=2e-4)  # beyond the table: the expansion
    assert t975(10**6) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(AcodmError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])


def _run(losses: list[float], domains: dict[str, float], flops: float = 100.0) -> RunResult:
    return RunResult(
        steps=[0, 10, 20][: len(losses)],
        loss_mean=losses,
        ppl_mean=[math.exp(x) for x in losses],
        final_domain_loss=domains,
        flops_6nd=flops,
    )


def test_summarize_by_hand() -> None:
    results = {
        "unimax": {
            0: _run([7.0, 5.0, 4.0], {"a": 3.0, "b": 5.0}),
            1: _run([7.0, 5.2, 4.2], {"a": 3.2, "b": 5.2}),
        },
        "uniform": {
            0: _run([7.0, 4.5, 4.1], {"a": 3.5, "b": 4.7}),
            1: _run([7.0, 5.5, 4.5], {"a": 3.0, "b": 6.0}),
        },
        "policy": {
            0: _run([7.0, 4.0, 3.9], {"a": 2.0, "b": 5.8}),
            1: _run([7.0, 5.1, 4.3], {"a": 3.1, "b": 5.5}),
        },
    }
    s = summarize(
        results,
        seeds=[0, 1],
        reference="unimax",
        baselines=["unimax", "uniform"],
        static=["unimax", "uniform"],
        proxy_flops={"policy": 50.0},
    )
    pol = s["arms"]["policy"]
    assert pol["final_loss"]["values"] == [3.9, 4.3]
    assert pol["best_loss"]["mean"] == pytest.approx(4.1)
    # seed 0: b 5.8 > 5.0 (a better); seed 1: b 5.5 > 5.2 (a 3.1 < 3.2)
    assert pol["domains_worse_than_reference"]["per_seed"] == [1, 1]
    assert pol["worst_domain"]["domain"] == "b"
    assert pol["worst_domain"]["loss"]["mean"] == pytest.approx(5.65)
    # unimax's finals 4.0 / 4.2: policy reaches 4.0 at step 10 on seed 0, never 4.2 on seed 1
    assert pol["steps_to_reference_final"]["per_seed"] == [10, None]
    vs = pol["against"]["unimax"]
    assert vs["differences"] == pytest.approx([-0.1, 0.1])
    assert (vs["wins"], vs["losses"]) == (1, 1)
    half = 12.7062 * math.sqrt(0.02) / math.sqrt(2)
    assert vs["ci95"] == pytest.approx([-half, half])
    assert pol["proxy_compute"] == {"flops_6nd": 50.0, "target_runs": 0.5}
    assert "unimax" not in s["arms"]["unimax"]["against"]
    assert s["arms"]["uniform"]["proxy_compute"] is None
    # uniform's seed 0 reaches 4.0? its curve 7.0, 4.5, 4.1: never; seed 1 (4.2): never
    assert s["arms"]["uniform"]["steps_to_reference_final"]["reached"] == 0
    sep = s["separation"]
    assert sep["spread"] == pytest.approx(0.2) and sep["max_seed_sd"] == pytest.approx(
        math.sqrt(0.08)
    )
    assert sep["separated"] is False
    assert separation({"x": [1.0, 1.01], "y": [2.0, 2.02]})["separated"] is True


def test_recipe_rows_by_hand() -> None:
    """Arms ``ens@0`` / ``ens@1`` / ``ens@2`` (one per agent seed) against uniform, 2 seeds."""
    dom = {"a": 1.0}
    finals = {"uniform": [4.0, 4.2], "ens@0": [3.9, 4.1], "ens@1": [4.1, 4.3], "ens@2": [3.8, 4.3]}
    results = {arm: {s: _run([5.0, v], dom) for s, v in enumerate(f)} for arm, f in finals.items()}
    assert recipe_groups(["uniform", "ens@0", "ens@1", "ens@2", "solo@0", "x@"]) == {
        "ens": ["ens@0", "ens@1", "ens@2"]
    }
    s = summarize(
        results,
        seeds=[0, 1],
        reference="uniform",
        baselines=["uniform"],
        static=["uniform"],
    )
    r = s["recipes"]["ens"]
    assert r["arms"] == ["ens@0", "ens@1", "ens@2"]
    # per seed, the mean over the 3 arms
    assert r["final_loss"]["values"] == pytest.approx([11.8 / 3, 12.7 / 3])
    vs = r["against"]["uniform"]
    assert vs["over_seeds"]["differences"] == pytest.approx([11.8 / 3 - 4.0, 12.7 / 3 - 4.2])
    # per arm mean differences -0.1, +0.1, -0.05: mean -1/60, sd sqrt(0.0216667 / 2), t(2)
    assert vs["per_arm_mean"] == pytest.approx([-0.1, 0.1, -0.05])
    assert vs["over_arms"]["mean"] == pytest.approx(-1 / 60)
    sd = math.sqrt(((1 / 12) ** 2 + (7 / 60) ** 2 + (1 / 30) ** 2) / 2)
    assert vs["over_arms"]["sd"] == pytest.approx(sd)
    half = 4.3027 * sd / math.sqrt(3)
    assert vs["over_arms"]["ci95"] == pytest.approx([-1 / 60 - half, -1 / 60 + half])
    # pairs: ens@0 wins 2; ens@1 loses 2; ens@2 wins seed 0, loses seed 1
    assert (vs["wins"], vs["losses"], vs["pairs"], vs["arms_better"]) == (3, 3, 6, 2)
    assert "ens (3 arms)" in format_summary(s)
    arms = parse_arms("uniform,ens@0=uniform,ens@1=natural")
    assert [(a.name, a.folder) for a in arms[1:]] == [("ens@0", "ens-0"), ("ens@1", "ens-1")]


# -- arms and seeds -------------------------------------------------------------------------


def test_parse_arms_labels_and_commas_inside_a_spec() -> None:
    arms = parse_arms(["uniform,temperature:0.5,odm:warmup=0.05,alpha=0.5", "u4=unimax:4"])
    assert [(a.name, a.spec) for a in arms] == [
        ("uniform", "uniform"),
        ("temperature:0.5", "temperature:0.5"),
        ("odm:warmup=0.05,alpha=0.5", "odm:warmup=0.05,alpha=0.5"),
        ("u4", "unimax:4"),
    ]
    assert [a.kind for a in arms] == ["static", "static", "online", "static"]
    assert arms[1].folder == "temperature-0.5"
    (d,) = parse_arms("doremi:eta=0.5,smooth=0.01")
    assert d.doremi_pipeline and d.spec == "doremi:eta=0.5,smooth=0.01"
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ("uniform,unimx:4", "unknown mixer 'unimx'"),
        ("unimax:lots", "arm 'unimax:lots'"),
        ("uniform,uniform", "repeat a name"),
        ("uniform,,natural", "empty item"),
        ("p=actor:/nonexistent/policy", "arm 'p'"),
    ],
)
def test_bad_arm_specs_are_clear_errors(arms: str, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        parse_arms(arms)


def test_bad_seeds_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="0-4"):
        parse_seeds("zero")
    with pytest.raises(StudyError, match="empty"):
        parse_seeds("3-1")
    store = make_text_store(tmp_path / "store")
    with pytest.raises(StudyError, match="cannot set"):
        study(store.path, tmp_path / "s", arms="uniform", overrides={"mixer": "natural"})
    with pytest.raises(StudyError, match="not a token store"):
        study(tmp_path, tmp_path / "s", arms="uniform")


def test_policy_flops_from_policy_json(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(
        json.dumps({"extra": {"compute": {"tokens": 10, "params": 3, "flops_6nd": 180.0}}})
    )
    assert policy_flops(f"actor:{tmp_path},reorder=1") == 180.0
    (tmp_path / "policy.json").write_text(json.dumps({"extra": {}}))
    assert policy_flops(f"actor:{tmp_path}") is None


# -- real runs (the micro model, a few steps) ------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("study")
    store = make_text_store(tmp / "store")
    out = tmp / "study"
    result = study(
        store.path,
        out,
        arms="uniform,natural",
        seeds="0-1",
        jobs=2,
        overrides=SMALL,
        progress=False,
    )
    return {"store": store.path, "out": out, "result": result}


def _evals(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval/loss_mean" in r]


def test_same_seed_same_init_and_data_order_in_every_arm(small_study: dict[str, Any]) -> None:
    runs = small_study["out"] / "runs"
    for seed in (0, 1):
        a, b = runs / "uniform" / f"seed{seed}", runs / "natural" / f"seed{seed}"
        # the step-0 evaluation (before any update) is the model init on the fixed windows
        assert _evals(a)[0] == _evals(b)[0]
        ca, cb = (json.loads((r / "config.json").read_text())["train"] for r in (a, b))
        assert {k for k in ca if ca[k] != cb[k]} == {"mixer"}
        assert ca["seed"] == seed and ca["model"] == "micro"
    # another seed, another init
    assert _evals(runs / "uniform" / "seed0")[0] != _evals(runs / "uniform" / "seed1")[0]
    # and the window order inside a domain does not depend on the mixer (DomainSampler)
    from acodm.data.sampler import DomainSampler
    from acodm.data.store import open_store

    store = open_store(small_study["store"])
    s1 = DomainSampler(store, seq_len=32, batch_size=4, seed=1, weights=[1, 0, 0])
    s2 = DomainSampler(store, seq_len=32, batch_size=4, seed=1, weights=[0.2, 0.3, 0.5])
    assert (s1._epoch_order(0, 0) == s2._epoch_order(0, 0)).all()


def test_study_report_files(small_study: dict[str, Any]) -> None:
    out, result = small_study["out"], small_study["result"]
    saved = json.loads((out / "study.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["seeds"] == [0, 1] and list(saved["arms"]) == ["uniform", "natural"]
    # no UniMax arm: the reference is the static arm of lowest mean final loss
    finals = {a: saved["arms"][a]["final_loss"]["mean"] for a in ("uniform", "natural")}
    assert saved["reference"] == min(finals, key=finals.get)
    nat = saved["arms"]["natural"]
    loss = [_evals(out / "runs" / "natural" / f"seed{s}")[-1]["eval/loss_mean"] for s in (0, 1)]
    assert nat["final_loss"]["values"] == loss
    uni = [_evals(out / "runs" / "uniform" / f"seed{s}")[-1]["eval/loss_mean"] for s in (0, 1)]
    assert nat["against"]["uniform"]["differences"] == pytest.approx(
        [x - y for x, y in zip(loss, uni, strict=True)]
    )
    text = (out / "study.txt").read_text()
    assert "paired difference" in text and "static arms" in text
    assert saved["separation"]["arms"] == ["uniform", "natural"]


def test_resume_reuses_finished_runs_and_refuses_other_settings(
    small_study: dict[str, Any], tmp_path: Path
) -> None:
    src = small_study["out"]
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    plan = StudyPlan(
        store=str(small_study["store"]),
        out=out,
        preset="study_cpu_target",
        proxy_preset="study_cpu_proxy",
        arms=parse_arms("uniform,natural"),
        seeds=[0, 1],
        overrides=dict(SMALL),
    )
    ran: list[tuple[str, int]] = []

    def counting(job: Any, env: Any) -> str | None:
        ran.append((job.arm.name, job.seed))
        return _run_job(job, env)

    execute(plan, jobs=2, progress=False, runner=counting)
    assert ran == []  # everything finished: nothing runs again
    # an interrupted run (no summary yet) is resumed, and only it
    (out / "runs" / "natural" / "seed1" / "summary.json").unlink()
    execute(plan, jobs=2, progress=False, runner=counting)
    assert ran == [("natural", 1)]
    again = report(plan)
    assert again["arms"] == json.loads(json.dumps(small_study["result"]["arms"]))
    # a folder made with other settings is never reused
    other = StudyPlan(**{**plan.__dict__, "overrides": {**SMALL, "lr": 1e-2}})
    with pytest.raises(StudyError, match="other settings"):
        execute(other, jobs=1, progress=False, runner=counting)


def test_doremi_arm_runs_its_three_stages_first() -> None:
    plan = StudyPlan(
        store="/s",
        out=Path("/o"),
        preset="study_cpu_target",
        proxy_preset="study_cpu_proxy",
        arms=[Arm("doremi", "doremi:eta=0.5")],
        seeds=[3],
        overrides={},
    )
    job = plan.job(plan.arms[0], 3)
    by_tokens = StudyPlan(**{**plan.__dict__, "overrides": {"tokens": 4096}})
    assert by_tokens.config("study_cpu_target", "uniform", 0).total_steps() == 1
    names = [type(s).__name__ for s in job.steps]
    assert names == ["_Pretrain", "_Command", "_Pretrain", "_Command", "_Pretrain"]
    ref, _, proxy, _, target = job.steps
    assert ref.config.mixer == "uniform" and ref.config.steps == 100  # the proxy preset
    assert proxy.config.mixer == "doremi:ref=/o/doremi/doremi/seed3/reference.json,eta=0.5"
    assert target.config.mixer == "file:/o/doremi/doremi/seed3/weights.json"
    assert target.run == Path("/o/runs/doremi/seed3") and target.config.steps == 200
    assert {s.config.seed for s in (ref, proxy, target)} == {3}


def test_study_cli_bad_arm_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_text_store(tmp_path / "store")
    rc = main(["study", "--store", str(store.path), "--out", str(tmp_path / "s"), "--arms", "nope"])
    assert rc == 2
    assert "unknown mixer 'nope'" in capsys.readouterr().err
    base = ["study", "--store", str(store.path), "--out", str(tmp_path / "s")]
    rc = main([*base, "--arms", "uniform", "--set", "stepz=3"])
    assert rc == 2 and "FIELD=VALUE" in capsys.readouterr().err
