"""Shared helpers for the multi-process tests: launch real `torchrun` on the CPU (gloo), never a mock."""
import json
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

TINY = ['--depth', '2', '--aspect-ratio', '32', '--head-dim', '32', '--max-seq-len', '64', '--device-batch-size', '2',
        '--total-batch-size', '512', '--eval-every', '-1', '--eval-tokens', '256', '--matrix-lr', '0.2',
        '--embedding-lr', '2.0', '--unembedding-lr', '0.05', '--target-param-data-ratio', '-1']   # a 2-layer base run
MID = ['--eval-every', '-1', '--eval-tokens', '256', '--mixture-scale', '0.02', '--chatcore-every', '-1']   # mid/SFT on top of it

def base_dir_with_tokenizer(tmp_path_factory, name: str) -> Path:
    "A fresh base directory with the embedded corpus and a 512-token tokenizer (for a test module's stage runs)."
    d = tmp_path_factory.mktemp(name) / 'nanolit'
    res = run([sys.executable, '-m', 'nanolit.tokenizer', '--vocab-size', '512', '--max-chars', '2000000'],
              {'NANOLIT_BASE_DIR': str(d)})
    assert res.returncode == 0, res.stderr
    return d

def stage(module, args, base_dir, nproc=1, env=None, check=True, timeout=300, expect=0):
    "Run a stage's module (alone, or under torchrun with `nproc` processes); by default assert it exits `expect`."
    env = {'NANOLIT_BASE_DIR': str(base_dir), **(env or {})}
    cmd = torchrun_cmd(nproc, ['-m', module], *args) if nproc > 1 else [sys.executable, '-m', module, *args]
    res = run(cmd, env, timeout=timeout)
    if check: assert res.returncode == expect, f"exit {res.returncode}\n" + res.stdout[-3000:] + res.stderr[-3000:]
    return res

def run_dir(base_dir, stage_dir, tag) -> Path: return Path(base_dir) / stage_dir / tag

def losses(base_dir, stage_dir, tag) -> list[float]:
    "The per-step training losses in a run's metrics.jsonl."
    lines = (run_dir(base_dir, stage_dir, tag) / 'metrics.jsonl').read_text().splitlines()
    return [r['loss'] for r in map(json.loads, lines) if 'loss' in r]

def newest_step(d: Path) -> Path:
    return d / f"step_{max(int(p.name[5:]) for p in d.glob('step_*')):06d}"

def weights(base_dir, stage_dir, tag) -> dict:
    "The newest checkpoint's weights."
    return torch.load(newest_step(run_dir(base_dir, stage_dir, tag)) / 'model.pt')

def meta(base_dir, stage_dir, tag) -> dict:
    "The newest checkpoint's meta."
    return json.loads((newest_step(run_dir(base_dir, stage_dir, tag)) / 'meta.json').read_text())

def one_line_error(res, *must):
    "The process failed with exactly one `error:` line last on stderr, containing each of `must`."
    assert res.returncode != 0, res.stdout[-2000:]
    err = res.stderr.strip().splitlines()
    assert err and err[-1].count('error:') == 1, res.stderr[-2000:]
    for m in must: assert m in err[-1], err[-1]

# torch.compile on the CPU writes C++ and needs a compiler; .ci/setup cannot install one, so say so instead of failing.
needs_cxx = pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                               reason='torch.compile on the CPU needs a C++ compiler (install g++)')

@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    "A fresh NANOLIT_BASE_DIR for one test."
    d = tmp_path / 'nanolit'
    monkeypatch.setenv('NANOLIT_BASE_DIR', str(d))
    return d

def chat_is_engine_greedy(bd, source: str, tag: str, monkeypatch, prompt: str = 'hello', max_tokens: int = 12):
    """`nanolit_chat --temperature 0` on a checkpoint prints exactly the engine's greedy reply from the same checkpoint
    in this process, and the engine's KV-cached greedy tokens equal greedy decoding without the cache; returns the model."""
    import io, torch
    res = run([sys.executable, '-m', 'nanolit.chat', '--source', source, '--model-tag', tag, '--prompt', prompt,
               '--temperature', '0', '--max-tokens', str(max_tokens)], {'NANOLIT_BASE_DIR': str(bd)})
    assert res.returncode == 0, res.stderr[-2000:]
    monkeypatch.setenv('NANOLIT_BASE_DIR', str(bd))
    from nanolit.chat import stream_reply
    from nanolit.checkpoint import load_model
    from nanolit.engine import Engine
    model, tok, _ = load_model(source, 'cpu', 'eval', tag)
    engine, conv, out = Engine(model, tok), {'messages': [{'role': 'user', 'content': prompt}]}, io.StringIO()
    stream_reply(engine, conv, out, temperature=0, max_tokens=max_tokens)
    assert res.stdout == out.getvalue(), (res.stdout, out.getvalue())
    start = tok.render_for_completion(conv)
    cached = [c[0] for c, _ in engine.generate(start, 1, max_tokens=max_tokens, temperature=0)]
    ids = list(start)
    with torch.no_grad():
        for _ in cached: ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert ids[len(start):] == cached
    return model

def stopped_and_straight(bd, args, tag: str, after: int = 3) -> tuple[str, str]:
    """Train base `args` straight (`{tag}straight`), and stopped by a real SIGTERM after step `after` then resumed by the
    same command (`{tag}stop`); asserts the stop exits 143 and records signal 15. Returns (stopped, straight) tags."""
    stage('nanolit.base_train', args + ['--model-tag', f'{tag}straight'], bd)
    stage('nanolit.base_train', args + ['--model-tag', f'{tag}stop'], bd,
          env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': str(after)}, expect=143)
    assert meta(bd, 'base_checkpoints', f'{tag}stop')['signal'] == 15
    stage('nanolit.base_train', args + ['--model-tag', f'{tag}stop'], bd)
    assert losses(bd, 'base_checkpoints', f'{tag}stop') == losses(bd, 'base_checkpoints', f'{tag}straight')
    return f'{tag}stop', f'{tag}straight'

def two_and_one_process(bd, args, tag: str) -> tuple[str, str]:
    """Train base `args` on 2 processes (`{tag}w2`) and on 1 with twice the accumulation (`{tag}w1`); asserts the
    per-step losses agree to 1e-5 relative. Returns (two, one) tags."""
    stage('nanolit.base_train', args + ['--model-tag', f'{tag}w2'], bd, nproc=2)
    stage('nanolit.base_train', args + ['--model-tag', f'{tag}w1'], bd)
    two, one = losses(bd, 'base_checkpoints', f'{tag}w2'), losses(bd, 'base_checkpoints', f'{tag}w1')
    assert len(one) == len(two) and max(abs(a - b) / abs(b) for a, b in zip(two, one)) <= 1e-5, (two, one)
    return f'{tag}w2', f'{tag}w1'

def compiled_equals_eager(model, idx, targets):
    """The loss and every gradient of `model(idx, targets)`, eager and `torch.compile`d: the losses agree to 1e-6
    relative, the gradients to 1e-4. Returns the eager gradients, by parameter name."""
    import torch
    def loss_and_grads(fwd):
        model.zero_grad(set_to_none=True); loss = fwd(idx, targets); loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}
    loss_e, grads_e = loss_and_grads(model)
    loss_c, grads_c = loss_and_grads(torch.compile(model, dynamic=False))
    assert abs(loss_c - loss_e) <= 1e-6 * loss_e and max_rel(grads_c, grads_e) < 1e-4, (loss_c, loss_e, max_rel(grads_c, grads_e))
    return grads_e

# Worker scripts run under torchrun, the stress script is opt-in, fixtures hold scripts that tests run: none is a test module.
collect_ignore = ['workers', 'stress_torchrun.py', 'fixtures']

def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped without one (tests/test_gpu.py, run by bench/gpu_check.sh)')
