"""Run under torchrun: checks that compute_init joins the group and collectives work, then leaves cleanly."""
import os

import torch
import torch.distributed as dist

from nanolit.common import compute_cleanup, compute_init, print0

info = compute_init('cpu')
assert info.ddp and dist.is_initialized() and dist.get_backend() == 'gloo'
assert info.world_size == dist.get_world_size() and info.rank == dist.get_rank()
t = torch.tensor([float(info.rank + 1)])
dist.all_reduce(t)                                   # 1 + 2 + ... + world_size
assert t.item() == info.world_size * (info.world_size + 1) / 2, t
b = torch.tensor([123.0 if info.rank == 0 else -1.0])
dist.broadcast(b, src=0)
assert b.item() == 123.0, b
print(f"rank {info.rank}/{info.world_size} local {info.local_rank}: all_reduce={t.item():g} broadcast={b.item():g}", flush=True)
print0("ddp ok")
if os.environ.get("NANOLIT_FAIL_RANK") == str(info.rank):
    raise RuntimeError(f"failing on purpose on rank {info.rank}")
if os.environ.get("NANOLIT_PLAIN_EXIT") == "1":    # measure the plain teardown, without compute_cleanup's exit hook
    dist.barrier(); dist.destroy_process_group()
else:
    compute_cleanup()
