"""Run under torchrun (2 processes, gloo): every collective helper of nanolit.common, and nanolit_eval's sum of counts."""
import torch

from nanolit.common import (all_gather, all_gather_into_tensor, all_reduce, barrier, broadcast, collective_device, compute_cleanup,
                            compute_init, reduce_scatter_tensor)
from nanolit.eval import evaluate_task
from nanolit.tasks import SpellingBee

info = compute_init('cpu')
r, W = info.rank, info.world_size
assert collective_device() == info.device == torch.device('cpu'), collective_device()
assert all_reduce(torch.tensor([float(r + 1)])).item() == W * (W + 1) / 2
assert all_reduce(torch.tensor([float(r)]), 'max').item() == W - 1
assert broadcast(torch.tensor([7.0 if r == 0 else -1.0])).item() == 7.0
gathered = all_gather_into_tensor(torch.empty(2 * W), torch.full((2,), float(r)))
assert gathered.tolist() == [float(i) for i in range(W) for _ in range(2)], gathered
parts = all_gather([torch.empty(3) for _ in range(W)], torch.full((3,), float(r)))
assert [p.tolist() for p in parts] == [[float(i)] * 3 for i in range(W)], parts
handle = reduce_scatter_tensor(out := torch.empty(2), torch.arange(2.0 * W), async_op=True)
handle.wait()
assert out.tolist() == [W * (2.0 * r), W * (2.0 * r + 1)], out
bee = SpellingBee(20, 'test')
res = evaluate_task(bee, lambda c: f"#### {c['answer']}" if int(c['answer']) % 2 else 'no', rank=r, world_size=W)
expect = sum(int(bee[i]['answer']) % 2 for i in range(20))
assert (res['problems'], res['correct']) == (20, expect), (res, expect)
barrier()
print(f"rank {r}: collectives ok, eval {res['correct']}/{res['problems']}", flush=True)
compute_cleanup()
