"""Run alone or under torchrun: train a tiny GPT with MuonAdamW on a fixed global batch split across ranks.

    python optim_ddp.py OUT_DIR --steps N [--save-at K] [--resume-from DIR]

Each rank's loss is (summed cross-entropy of its rows) / (number of targets in the global batch), so the gradients
summed over ranks are the gradient of the global mean loss, whatever the world size. Micro-batches are 2 rows: one
process accumulates two of them, each of 2 ranks computes one, so both sum the same two partial gradients. Rank 0 writes the final
parameters to OUT_DIR/params.pt; with --save-at K every rank writes its optimizer shard and rank 0 the model at step K.
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from nanolit.common import compute_cleanup, compute_init
from nanolit.model import GPT, GPTConfig, randomize_
import nanolit.optim  # noqa: F401  (adds GPT.setup_optimizer)

p = argparse.ArgumentParser()
p.add_argument('out_dir'); p.add_argument('--steps', type=int, default=5)
p.add_argument('--save-at', type=int, default=-1); p.add_argument('--resume-from', default='')
args = p.parse_args()
info = compute_init('cpu')
out = Path(args.out_dir); out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
cfg = GPTConfig(sequence_len=16, vocab_size=96, n_layer=3, n_head=2, n_kv_head=1, n_embd=32, short_window=4)
# Randomised, so that every parameter gets a real gradient from step 1 (at init the zero output projections
# leave attention's weights with none, and the test would pass without exercising them).
model = randomize_(GPT(cfg), std=0.05)
opt = model.setup_optimizer(weight_decay=0.05, normuon=True, shard_min_numel=256)   # small threshold: shard everything
start = 0
if args.resume_from:
    src = Path(args.resume_from)
    ckpt = torch.load(src / 'model.pt')
    model.load_state_dict(ckpt['model']); start = ckpt['step']
    shards = [torch.load(f, weights_only=False) for f in sorted(src.glob('optim_rank*.pt'))]
    opt.load_state_dict(shards)
g = torch.Generator().manual_seed(123)
batches = [torch.randint(0, 96, (4, 17), generator=g) for _ in range(args.steps)]   # global batch: 4 rows
rows_per_rank = 4 // info.world_size
for step in range(start, args.steps):
    if step == args.save_at:
        torch.save(opt.state_dict(), out / f'optim_rank{info.rank}.pt')
        if info.is_primary: torch.save({'model': model.state_dict(), 'step': step}, out / 'model.pt')
    mine = batches[step][info.rank * rows_per_rank:(info.rank + 1) * rows_per_rank]
    for x in mine.split(2):   # micro-batches of 2 rows: one process accumulates 2 of them, 2 ranks do 1 each
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction='sum') / batches[step][:, 1:].numel()
        loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)
if info.is_primary: torch.save(model.state_dict(), out / 'params.pt')
compute_cleanup()
