"""One rank of a gloo all-reduce of (rank + 1): prints "rank R/W on HOST: sum S".

Rank and world come from the DeepSpeed launcher (RANK, WORLD_SIZE) or from a SLURM step (SLURM_PROCID,
SLURM_NTASKS); MASTER_ADDR and MASTER_PORT from either (the batch script exports them under SLURM).
"""

import datetime
import os
import socket

import torch
import torch.distributed as dist


def main() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "-1")))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "0")))
    addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    value = torch.tensor([rank + 1.0])
    dist.all_reduce(value)
    print(f"rank {rank}/{world} on {socket.gethostname()}: sum {value.item():g}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
