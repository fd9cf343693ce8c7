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


def test_compute_init_turns_on_huge_pages_before_the_first_tensor():
    "On the CPU, compute_init turns on torch's huge-page allocation (it then aligns tensors to pages); a user's 0 wins."
    code = ("from nanolit.common import compute_init; compute_init('cpu'); import torch; "
            "print(torch.empty(2 ** 20).data_ptr() % 4096)")   # a 4 MiB tensor: 64-byte aligned when off
    env = {k: v for k, v in os.environ.items() if k != 'THP_MEM_ALLOC_ENABLE'}
    on = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    off = subprocess.run([sys.executable, '-c', code], env={**env, 'THP_MEM_ALLOC_ENABLE': '0'},
                         capture_output=True, text=True, timeout=120)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert on.stdout.strip() == '0', on.stdout
    assert off.stdout.strip() != '0', off.stdout
