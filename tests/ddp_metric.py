"""IntrinsicDimension under torch.distributed: 2 CPU processes (gloo), uneven shards, batches of 256; rank 0 writes
the computed values to OUT/metric.json (tests/test_integrations.py runs this file and checks them).

    python tests/ddp_metric.py OUT
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actid.integrations.metric import IntrinsicDimension

SHARDS = (1200, 900)


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(sum(SHARDS), 6, generator=g) @ torch.randn(6, 40, generator=g)


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(SHARDS))
    torch.set_num_threads(1)
    X = data()
    start = sum(SHARDS[:rank])
    shard = X[start:start + SHARDS[rank]]
    metrics = {"twonn": IntrinsicDimension("twonn"), "mle": IntrinsicDimension("mle", {"k": 10}),
               "twonn_reservoir": IntrinsicDimension("twonn", max_points=1000, seed=3)}
    for batch in shard.split(256):
        for metric in metrics.values():
            metric.update(batch)
    values = {name: float(metric.compute()) for name, metric in metrics.items()}
    values["n_used_reservoir"] = int(metrics["twonn_reservoir"].result_.n_used_)
    if rank == 0:
        with open(os.path.join(out, "metric.json"), "w") as f:
            json.dump(values, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(worker, args=(sys.argv[1], free_port), nprocs=len(SHARDS))
