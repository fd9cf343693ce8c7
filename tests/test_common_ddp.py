"""compute_init / compute_cleanup under a real 2-process torchrun on the CPU."""
import os
import subprocess
import sys

from conftest import WORKERS, run, torchrun_cmd

def test_torchrun_two_processes_collectives_and_clean_exit():
    res = run(torchrun_cmd(2, WORKERS / 'common_ddp.py'), timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert 'rank 0/2 local 0: all_reduce=3 broadcast=123' in out, out
    assert 'rank 1/2 local 1: all_reduce=3 broadcast=123' in out, out
    assert out.count('ddp ok') == 1, out       # print0: rank 0 only
    assert 'terminate called' not in out, out


def test_failure_is_not_hidden_by_the_exit_hook():
    "A rank that fails before compute_cleanup must make the run fail: the exit hook only shortens clean exits."
    res = run(torchrun_cmd(2, WORKERS / 'common_ddp.py'), env_extra={'NANOLIT_FAIL_RANK': '1'}, timeout=180)
    assert res.returncode != 0, res.stdout + res.stderr
    assert 'failing on purpose on rank 1' in res.stdout + res.stderr


ALLOC_PROBE = """
from nanolit.common import compute_init; compute_init('cpu')
import torch
small, big = torch.empty(2 ** 20), torch.empty(2 ** 24)   # 4 MiB and 64 MiB
heap = [l.split()[0].split('-') for l in open('/proc/self/maps') if l.rstrip().endswith('[heap]')]
in_heap = any(int(a, 16) <= big.data_ptr() < int(b, 16) for a, b in heap)
print(small.data_ptr() % 4096 == 0, in_heap)
"""

def test_compute_init_tunes_the_cpu_allocator_and_respects_the_user():
    "compute_init turns on torch's huge pages (page-aligned tensors) and glibc's heap for big blocks; the user's say wins."
    env = {k: v for k, v in os.environ.items() if k != 'THP_MEM_ALLOC_ENABLE' and not k.startswith('MALLOC_')}
    def probe(**extra):
        res = subprocess.run([sys.executable, '-c', ALLOC_PROBE], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()
    assert probe() == ['True', 'True']   # huge pages on; a 64 MiB block served from the heap (kept when freed)
    assert probe(THP_MEM_ALLOC_ENABLE='0', MALLOC_MMAP_MAX_='65536') == ['False', 'False']   # glibc's defaults
