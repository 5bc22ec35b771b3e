"""Layer statistics and alignment of an FSDP2-sharded model equal the unsharded ones (issue 13).

Two gloo processes shard a small MLP with ``fully_shard`` (every monitored weight becomes a
DTensor, each rank holding half of its rows), train one step on their halves of a batch and
measure; one process measures the same step unsharded. The norms are reduced over the shards
(not read from a stale local parameter), so they agree to float rounding (the sums run in
another order: relative 1e-6, not bit for bit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from acodm.dynamics.alignment import GradientAlignment
from acodm.dynamics.features import LayerStats


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )
    return model, torch.randn(6, 5, 6), torch.tensor([0, 1, 2, 0, 2, 2])


def _measure(model: nn.Module, x: torch.Tensor, domains: torch.Tensor, scale: float) -> dict:
    mods = [("fc1", model[0]), ("fc3", model[4])]
    stats = LayerStats(mods)
    ga = GradientAlignment(mods, 3, rank=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ga.set_domains(domains)
    (model(x).pow(2).sum() * scale).backward()
    opt.step()
    ga.all_reduce()
    norm, dist = stats()
    return {"norm": torch.tensor(norm), "dist": torch.tensor(dist), "gram": ga.gram()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, x, domains = _setup()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        assert hasattr(model[0].weight, "device_mesh")  # sharded: a DTensor
        half = slice(3 * rank, 3 * rank + 3)
        # FSDP averages the two ranks' gradients: each rank's sum is half of the batch's
        got = _measure(model, x[half], domains[half], scale=1.0)
        torch.save(got, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # 2 spawned processes: about 10 s
def test_fsdp2_sharded_layer_stats_and_gram_equal_the_unsharded(tmp_path: Path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model, x, domains = _setup()
    want = _measure(model, x, domains, scale=0.5)  # the average of the two halves' sums
    assert (want["dist"] > 0).all()  # the step moved the weights
    for r in range(2):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=True)
        for key in ("norm", "dist"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=0)
        # the Gram sums the ranks' unscaled per-domain gradients: 4x the scaled reference's
        torch.testing.assert_close(got["gram"], 4 * want["gram"], rtol=1e-5, atol=1e-9)


def test_a_weight_sharded_after_the_probe_was_built_is_an_error():
    class FakeSharded(torch.Tensor):  # a named fake: looks like a DTensor to the check
        device_mesh = None

        def to_local(self):
            return self

    lin = nn.Linear(3, 2)
    stats = LayerStats([("lin", lin)])
    lin.weight = nn.Parameter(lin.weight.detach().clone().as_subclass(FakeSharded))
    with pytest.raises(ValueError, match="build the DynamicsProbe after fully_shard"):
        stats()


def test_the_stats_read_the_live_parameter_not_a_stale_copy():
    lin = nn.Linear(3, 2)
    stats = LayerStats([("lin", lin)])
    n0 = float(torch.linalg.vector_norm(lin.weight.detach()))
    lin.weight = nn.Parameter(2 * lin.weight.detach())  # replaced, as fully_shard does
    norm, dist = stats()
    assert norm[0] == pytest.approx(2.0) and dist[0] == pytest.approx(1.0)
    assert n0 > 0
