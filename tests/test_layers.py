"""Dependencies point one way: experiments -> policies -> envs -> acodm core (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The acodm modules ``path`` imports (``import x`` and ``from x import y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("acodm")}


def offenders(folder: str, forbidden: tuple[str, ...], *, top_level_only: bool) -> list[str]:
    return sorted(
        f"{p.relative_to(ROOT)} imports {m}"
        for p in (ROOT / folder).rglob("*.py")
        for m in imports(p, top_level_only=top_level_only)
        if m.startswith(forbidden)
    )


def test_the_core_does_not_import_envs_or_policies_at_import_time():
    assert offenders("acodm", ("acodm.envs", "acodm.policies"), top_level_only=True) == []


def test_envs_do_not_import_policies():
    assert offenders("envs", ("acodm.policies",), top_level_only=False) == []


def test_mixers_do_not_import_the_trainer():
    """The trainer drives mixers; what both need (resolve_device, the probe) lies below."""
    assert (
        offenders("acodm/mixers", ("acodm.trainer", "acodm.pretrain"), top_level_only=False) == []
    )
