"""Under torchrun: MuonAdamW resumed twice is bit-exact, holds only its own state, and reshards to another world size.

    python -m torch.distributed.run --nproc_per_node=W optim_resume.py OUT_DIR --steps N --saves K1,K2
    python -m torch.distributed.run --nproc_per_node=W optim_resume.py OUT_DIR --steps N --resume-from SAVE_DIR

Cycle mode (--saves) trains N steps straight; then, from the same start, trains to K1, saves every rank's
`state_dict()`, builds a fresh model and optimizer, loads all the shards (as the checkpoint code reads them: on the
CPU, memory-mapped, weights_only), trains to K2, saves, loads into fresh ones again, and finishes. It asserts on
every rank that after each load the optimizer holds exactly the state the straight run holds (its own Muon matrices,
its own AdamW rows, nothing else), and at the end that weights and every state tensor equal the straight run's bit for
bit. It writes straight.pt (rank 0's final weights) and the saves under save_K/ (model.pt, optim_rank*.pt).

Resume mode (--resume-from) loads a save made at any world size, writes loaded_rank*.pt (each rank's `state_dict()`
right after loading) and continues to step N, writing resumed.pt (rank 0's final weights).

The tiny model has what the ownership rules must get right at 3 or 4 ranks (the worker asserts it): Muon groups of
4, 4, 2, 2 and 1 matrices, matrices under 4,096 elements and rows not divisible by 3, AdamW tensors that are
row-sharded (embeddings and head, 192 rows) and ones updated whole (the scalars). The global batch of 12 rows is split
across ranks, and each rank's loss is its summed cross-entropy over the global number of targets, so the gradients
summed over ranks are those of the global mean loss at any world size.
"""
import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from nanolit.common import compute_cleanup, compute_init
from nanolit.model import GPT, GPTConfig, randomize_
import nanolit.optim  # noqa: F401  (adds GPT.setup_optimizer)

p = argparse.ArgumentParser()
p.add_argument('out_dir'); p.add_argument('--steps', type=int, default=7)
p.add_argument('--saves', default=''); p.add_argument('--resume-from', default='')
args = p.parse_args()
info = compute_init('cpu')
W, rank = info.world_size, info.rank
out = Path(args.out_dir); out.mkdir(parents=True, exist_ok=True)
CFG = GPTConfig(sequence_len=16, vocab_size=150, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, short_window=4)
ROWS = 12   # global batch: divisible by 1, 2, 3 and 4 ranks
g = torch.Generator().manual_seed(123)
batches = [torch.randint(0, CFG.vocab_size, (ROWS, 17), generator=g) for _ in range(args.steps)]

def build():
    "A fresh model and optimizer: randomised, so that every parameter gets a real gradient from step 1."
    torch.manual_seed(0)
    model = randomize_(GPT(CFG), std=0.05)
    return model, model.setup_optimizer(weight_decay=0.05, normuon=True)

def train(model, opt, start, stop):
    for step in range(start, stop):
        x = batches[step][rank * ROWS // W:(rank + 1) * ROWS // W]
        loss = model(x[:, :-1], x[:, 1:], loss_reduction='sum') / batches[step][:, 1:].numel()
        loss.backward(); opt.step(); model.zero_grad(set_to_none=True)

def save(model, opt, d: Path):
    d.mkdir(parents=True, exist_ok=True)
    torch.save(opt.state_dict(), d / f'optim_rank{rank}.pt')
    if rank == 0: torch.save(model.state_dict(), d / 'model.pt')
    if dist.is_initialized(): dist.barrier()

def load(d: Path):
    "A fresh model and optimizer with the save in `d` loaded, read the way the checkpoint code reads it."
    model, opt = build()
    model.load_state_dict(torch.load(d / 'model.pt', map_location='cpu', weights_only=True))
    files = sorted(d.glob('optim_rank*.pt'), key=lambda f: int(f.stem[len('optim_rank'):]))
    opt.load_state_dict([torch.load(f, map_location='cpu', weights_only=True, mmap=True) for f in files])
    return model, opt

def check_setup(opt):
    "The model has the cases the test is about (else it would pass without exercising them)."
    muon = [g for g in opt.param_groups if g['kind'] == 'muon']
    adamw = [p for g in opt.param_groups if g['kind'] == 'adamw' for p in g['params']]
    assert any(len(g['params']) % W for g in muon), 'no Muon group with a matrix count not divisible by W'
    assert any(g['params'][0].numel() < 4096 for g in muon), 'no Muon matrix under 4,096 elements'
    assert any(opt._adamw_rows(p) for p in adamw) and any(opt._adamw_rows(p) is None for p in adamw), \
        'need AdamW tensors both row-sharded and updated whole'

def check_own_share(opt, ref):
    "`opt` holds exactly the state `ref` (the straight run) holds: its own matrices and rows, same names and shapes."
    for (g, j, p), (_, _, q) in zip(opt._params(), ref._params()):
        mine, want = opt.state.get(p, {}), ref.state.get(q, {})
        shapes = {k: tuple(v.shape) for k, v in mine.items()}
        assert shapes == {k: tuple(v.shape) for k, v in want.items()}, (rank, g['name'], j, shapes)
        if g['kind'] == 'muon': assert bool(mine) == (j in opt._muon_owned(g)[1]), (rank, g['name'], j)
        else:
            rows = opt._adamw_rows(p)
            assert mine['exp_avg'].shape[0] == (p.size(0) if rows is None else rows[1] - rows[0]), (rank, g['name'], j)
        assert all(v.device == (torch.device('cpu') if k == 'step' else p.device) for k, v in mine.items())

def check_equal(model, opt, ref_model, ref_opt, what):
    for (k, v), r in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(v, r), f'{what}: weight {k} differs on rank {rank}: max |diff| {(v - r).abs().max():.3e}'
    for (g, j, p), (_, _, q) in zip(opt._params(), ref_opt._params()):
        a, b = opt.state.get(p, {}), ref_opt.state.get(q, {})
        assert a.keys() == b.keys(), (what, rank, g['name'], j, a.keys(), b.keys())
        for k in a:
            assert torch.equal(a[k], b[k]), \
                f'{what}: {k} of {g["name"]}[{j}] differs on rank {rank}: max |diff| {(a[k] - b[k]).abs().max():.3e}'

if args.saves:
    ref_model, ref_opt = build()
    check_setup(ref_opt)
    train(ref_model, ref_opt, 0, args.steps)
    if rank == 0: torch.save(ref_model.state_dict(), out / 'straight.pt')
    model, opt = build()
    done = 0
    for k in map(int, args.saves.split(',')):
        train(model, opt, done, k)
        save(model, opt, out / f'save_{k}')
        model, opt = load(out / f'save_{k}')
        check_own_share(opt, ref_opt)
        done = k
    train(model, opt, done, args.steps)
    check_equal(model, opt, ref_model, ref_opt, f'{len(args.saves.split(","))} resumes at world size {W}')
    print(f'rank {rank} of {W}: resumed at steps {args.saves} of {args.steps}, bitwise equal to the straight run')
else:
    src = Path(args.resume_from)
    model, opt = load(src)
    torch.save(opt.state_dict(), out / f'loaded_rank{rank}.pt')
    start = int(src.name[len('save_'):])
    train(model, opt, start, args.steps)
    if rank == 0: torch.save(model.state_dict(), out / 'resumed.pt')
compute_cleanup()
