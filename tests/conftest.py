"""Shared helpers for the multi-process tests: launch real `torchrun` on the CPU (gloo), never a mock."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
WORKERS = TESTS / 'workers'

def torchrun_cmd(nproc: int, script, *args) -> list[str]:
    "The command line that runs `script` (a path, or `-m module`) under `torchrun --standalone` with `nproc` processes."
    target = list(script) if isinstance(script, (list, tuple)) else [str(script)]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *target, *map(str, args)]

def run(cmd, env_extra=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    "Run `cmd` with one CPU thread per process and no network, capturing its output."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'PYTHONUNBUFFERED': '1'}
    env.pop('RANK', None); env.pop('WORLD_SIZE', None); env.pop('LOCAL_RANK', None)
    env.update(env_extra or {})
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

def max_rel(a: dict, b: dict) -> float:
    "The largest per-tensor relative difference ||a - b|| / ||b|| (L2) over the tensors of `b` (weights, gradients)."
    return max(((a[k] - b[k]).double().norm() / b[k].double().norm().clamp_min(1e-12)).item() for k in b)

# torch.compile on the CPU writes C++ and needs a compiler; .ci/setup cannot install one, so say so instead of failing.
needs_cxx = pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                               reason='torch.compile on the CPU needs a C++ compiler (install g++)')

@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    "A fresh NANOLIT_BASE_DIR for one test."
    d = tmp_path / 'nanolit'
    monkeypatch.setenv('NANOLIT_BASE_DIR', str(d))
    return d

# Worker scripts run under torchrun, and the stress script is opt-in: neither is collected as a test module.
collect_ignore = ['workers', 'stress_torchrun.py']
