"""fit under torchrun with DistributedDataParallel: 2 CPU processes, gloo."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_fit_under_torchrun_shards_data_and_keeps_ranks_in_step(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    epochs = len(ranks[0]["seen"])
    assert epochs == 3
    for epoch in range(epochs):
        shard0, shard1 = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert len(shard0) == len(shard1) == 48
        # Every training sample exactly once per epoch across the ranks.
        assert sorted(shard0 + shard1) == list(range(96)), f"epoch {epoch}"
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1]  # reshuffled every epoch

    # Gradients are averaged, so the replicas stay identical.
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    # Metrics are reduced over ranks: both report the same history, and the loss falls.
    h0, h1 = ({k: v for k, v in r["history"].items() if k != "seconds"} for r in ranks)
    assert h0 == h1
    assert h0["train_loss"][-1] < h0["train_loss"][0]
