"""Save checkpoint 1, start saving checkpoint 2 in a child process and kill -9 it mid-write; checkpoint 1 must load."""
import os
import signal
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import torch

from nanolit.checkpoint import list_steps, load_checkpoint, save_checkpoint

def slow_save(run_dir):
    real_save = torch.save
    def save(obj, f, *a, **k):   # write half the bytes, then hang: the kill lands in the middle of the write
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100]); Path(run_dir, 'writing').touch(); time.sleep(60)
    torch.save = save
    save_checkpoint(run_dir, 2, {'w': torch.full((1000,), 2.0)}, {'state': {}}, {'tag': 'second'})

if __name__ == '__main__':
    run_dir = Path(sys.argv[1]) / 'run'
    save_checkpoint(run_dir, 1, {'w': torch.ones(1000)}, {'state': {}}, {'tag': 'first'})
    p = get_context('spawn').Process(target=slow_save, args=(run_dir,)); p.start()
    while not (run_dir / 'writing').exists(): time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL); p.join()
    assert list_steps(run_dir) == [1], list_steps(run_dir)
    weights, _, meta = load_checkpoint(run_dir)
    assert meta['step'] == 1 and torch.equal(weights['w'], torch.ones(1000))
    print('previous checkpoint loads: step 1')
