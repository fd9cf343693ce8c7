"""MuonAdamW across processes: 2 ranks (sharded) equal 1 process, and optimizer state reshards across world sizes."""
import sys

import torch

from conftest import WORKERS, run, torchrun_cmd

WORKER = WORKERS / 'optim_ddp.py'

def train(tmp, name, nproc, *extra):
    out = tmp / name
    cmd = torchrun_cmd(nproc, WORKER, out, *extra) if nproc > 1 else [sys.executable, str(WORKER), str(out), *map(str, extra)]
    res = run(cmd, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    return out

def max_rel_diff(a_dir, b_dir):
    a, b = torch.load(a_dir / 'params.pt'), torch.load(b_dir / 'params.pt')
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)

def test_two_ranks_equal_one_process_and_reshard(tmp_path):
    one = train(tmp_path, 'w1', 1, '--steps', 6)
    two = train(tmp_path, 'w2', 2, '--steps', 6, '--save-at', 3)
    d = max_rel_diff(two, one)
    print(f'world 2 vs world 1 after 6 steps: max relative difference {d:.2e}')
    assert d <= 1e-6, d
    assert len(list(two.glob('optim_rank*.pt'))) == 2
    # state saved at world size 2 (sharded), resumed on 1 process: continues the same curve
    resumed = train(tmp_path, 'w2_to_w1', 1, '--steps', 6, '--resume-from', two)
    d = max_rel_diff(resumed, two)
    print(f'saved at world 2, resumed at world 1: max relative difference {d:.2e}')
    assert d <= 1e-6, d
    # and the other way: saved by one process, resumed on 2 ranks
    one_saved = train(tmp_path, 'w1_saved', 1, '--steps', 6, '--save-at', 2)
    resumed2 = train(tmp_path, 'w1_to_w2', 2, '--steps', 6, '--resume-from', one_saved)
    d = max_rel_diff(resumed2, one)
    print(f'saved at world 1, resumed at world 2: max relative difference {d:.2e}')
    assert d <= 1e-6, d

def test_resume_same_world_is_bitwise(tmp_path):
    straight = train(tmp_path, 'straight', 2, '--steps', 5, '--save-at', 2)
    resumed = train(tmp_path, 'resumed', 2, '--steps', 5, '--resume-from', straight)
    a, b = torch.load(straight / 'params.pt'), torch.load(resumed / 'params.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)
