"""What keeps a run's work safe, through the real command lines: one run per run directory (a lock that dies with
its holder), workers that stop when their launcher dies, no non-finite checkpoint ever on disk, honest exit codes
(128 + signal) that stop the speedrun, a broken newest checkpoint skipped with a warning, a full disk that leaves
nothing partial, and one-line errors for bad flags and unwritable directories."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import MID, TINY, base_dir_with_tokenizer, losses, meta, one_line_error, run, run_dir, stage, torchrun_cmd

@pytest.fixture(scope='module')
def bd(tmp_path_factory): return base_dir_with_tokenizer(tmp_path_factory, 'safety')

def start(cmd, bd, **env):
    "Start a command in the background with the test environment; its output goes to a pipe."
    e = {**os.environ, 'NANOLIT_BASE_DIR': str(bd), 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1', **env}
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'): e.pop(k, None)
    return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

def wait_for_steps(bd, stage_dir, tag, n, proc, timeout=120):
    "Wait until the run has logged `n` training steps."
    f = run_dir(bd, stage_dir, tag) / 'metrics.jsonl'
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f.exists() and f.read_text().count('"loss"') >= n: return
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        time.sleep(0.05)
    raise TimeoutError(f"{f} never reached {n} steps")

def test_one_run_per_directory_and_the_lock_dies_with_its_holder(bd):
    long = TINY + ['--num-iterations', '100000', '--model-tag', 'lock']
    first = start([sys.executable, '-m', 'nanolit.base_train', *long], bd)
    try:
        wait_for_steps(bd, 'base_checkpoints', 'lock', 1, first)
        second = stage('nanolit.base_train', long, bd, check=False)
        one_line_error(second, 'another run is using', f'PID {first.pid} on host')
        # the same under torchrun: every rank refuses, none trains
        second = stage('nanolit.base_train', long, bd, nproc=2, check=False)
        assert second.returncode != 0 and second.stderr.count('another run is using') == 2, second.stderr[-2000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL); first.wait()
    # kill -9 left no stale lock: the directory is free at once (a fresh run, since nothing was saved)
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'lock'], bd)
    assert meta(bd, 'base_checkpoints', 'lock')['finished']

def test_workers_stop_and_save_when_torchrun_dies(bd):
    args = TINY + ['--num-iterations', '100000', '--model-tag', 'orphan']
    agent = start(torchrun_cmd(2, ['-m', 'nanolit.base_train'], *args), bd)
    wait_for_steps(bd, 'base_checkpoints', 'orphan', 2, agent)
    os.kill(agent.pid, signal.SIGKILL); agent.wait()             # the launcher only: its workers are orphaned
    d, deadline = run_dir(bd, 'base_checkpoints', 'orphan'), time.time() + 60
    while time.time() < deadline and not list(d.glob('step_*')): time.sleep(0.1)
    m = meta(bd, 'base_checkpoints', 'orphan')
    assert m['signal'] == signal.SIGHUP and not m['finished'], m
    # the workers have exited and released the lock: the same command resumes from their checkpoint
    deadline = time.time() + 60
    while True:
        res = stage('nanolit.base_train', TINY + ['--num-iterations', str(m['step'] + 1), '--model-tag', 'orphan'], bd, check=False)
        if res.returncode == 0 or time.time() > deadline or 'another run is using' not in res.stderr: break
        time.sleep(1)
    assert res.returncode == 0 and f"from step {m['step']}" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]

def all_finite(d: Path) -> bool:
    return all(torch.isfinite(t).all() for f in d.glob('step_*/model.pt') for t in torch.load(f).values() if t.is_floating_point())

def test_nan_is_never_checkpointed_and_the_rerun_resumes_from_the_last_finite_step(bd):
    # a huge scalar LR: the loss turns NaN at step 2; step 1's checkpoint (finite) is the one named and kept
    args = TINY + ['--num-iterations', '12', '--save-every', '1', '--keep-last', '1', '--warmup-ratio', '0.5',
                   '--scalar-lr', '1e30', '--model-tag', 'nanloss']
    res = stage('nanolit.base_train', args, bd, check=False)
    one_line_error(res, 'loss is nan at step 2', 'The last finite checkpoint is step 1')
    d = run_dir(bd, 'base_checkpoints', 'nanloss')
    assert all_finite(d) and sorted(p.name for p in d.glob('step_*')) == ['step_000001']
    res = stage('nanolit.base_train', args, bd, check=False)     # rerun: resumes from step 1 (and diverges again)
    assert 'from step 1' in res.stdout and 'loss is nan at step 2' in res.stderr, res.stdout[-1000:] + res.stderr[-1000:]
    # an infinite LR: the weights turn non-finite while the loss is still finite; that checkpoint is refused
    res = stage('nanolit.base_train', TINY + ['--num-iterations', '4', '--save-every', '1', '--scalar-lr', 'inf',
                                              '--model-tag', 'nanw'], bd, check=False)
    one_line_error(res, 'not saving step 1: the weights are not finite', 'The last finite checkpoint is none yet')
    assert not list(run_dir(bd, 'base_checkpoints', 'nanw').glob('step_*'))

def test_bad_flags_and_paths_fail_in_one_line(bd, tmp_path):
    for n in ('0', '-5'):   # used to start the full default run
        one_line_error(stage('nanolit.base_train', TINY + ['--num-iterations', n], bd, check=False),
                       '--num-iterations', '-1 to let the stage decide')
        one_line_error(stage('nanolit.midtrain', MID + ['--num-iterations', n], bd, check=False), '--num-iterations')
    for depth in ('0', '-2'):
        one_line_error(stage('nanolit.base_train', TINY + ['--depth', depth], bd, check=False), '--depth', 'at least 1')
    res = run([sys.executable, '-m', 'nanolit.tokenizer', '--data-dir', str(tmp_path / 'nonexistent')], {'NANOLIT_BASE_DIR': str(bd)})
    one_line_error(res, str(tmp_path / 'nonexistent'))

def test_truncated_or_corrupt_newest_checkpoint_falls_back_to_the_previous_step(bd):
    args = TINY + ['--num-iterations', '6', '--save-every', '2', '--keep-last', '3']
    stage('nanolit.base_train', args + ['--model-tag', 'ok'], bd)
    stage('nanolit.base_train', args + ['--model-tag', 'trunc'], bd, env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': '4'}, expect=143)
    f = run_dir(bd, 'base_checkpoints', 'trunc') / 'step_000004' / 'model.pt'
    f.write_bytes(f.read_bytes()[:1000])
    res = stage('nanolit.base_train', args + ['--model-tag', 'trunc'], bd)
    assert f"{f} is truncated" in res.stdout and 'from step 2' in res.stdout, res.stdout[-2000:]
    assert losses(bd, 'base_checkpoints', 'trunc') == losses(bd, 'base_checkpoints', 'ok')   # steps 3-4 redone, exactly
    # a corrupt meta.json of the newest checkpoint is named, and the step before it used
    stage('nanolit.base_train', args + ['--model-tag', 'cmeta'], bd, env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': '4'}, expect=143)
    m = run_dir(bd, 'base_checkpoints', 'cmeta') / 'step_000004' / 'meta.json'
    m.write_text(m.read_text()[:50])
    res = stage('nanolit.base_train', args + ['--model-tag', 'cmeta'], bd)
    assert f"{m} cannot be read" in res.stdout and 'from step 2' in res.stdout, res.stdout[-2000:]

def test_a_stopped_stage_stops_the_speedrun_and_is_not_midtrained_by_accident(bd):
    res = run([sys.executable, '-m', 'nanolit.speedrun', '--preset', 'tiny', '--model-tag', 'sr'],
              {'NANOLIT_BASE_DIR': str(bd), 'NANOLIT_TEST_SIGTERM_AFTER_STEP': '3'}, timeout=300)
    assert res.returncode == 143, res.stdout[-2000:] + res.stderr[-2000:]
    assert "step 'base' was stopped by signal 15; run the same command to resume" in res.stderr, res.stderr[-2000:]
    assert not meta(bd, 'base_checkpoints', 'sr')['finished'] and not run_dir(bd, 'mid_checkpoints', 'sr').exists()
    one_line_error(stage('nanolit.midtrain', MID + ['--model-tag', 'sr', '--output-tag', 'srm'], bd, check=False),
                   'is from a run that did not finish', '--model-step 3')
    stage('nanolit.midtrain', MID + ['--model-tag', 'sr', '--model-step', '3', '--num-iterations', '1', '--output-tag', 'srm'], bd)

def mount(*args) -> bool:
    "Try a mount (root on Linux); False where this machine does not allow it."
    if shutil.which('mount') is None: return False
    return subprocess.run(['mount', *args], capture_output=True).returncode == 0

def test_a_full_disk_leaves_nothing_partial(bd):
    args = TINY + ['--num-iterations', '4', '--save-every', '2']
    # injected into the writer (after the space check passed): the partial directory is removed
    res = stage('nanolit.base_train', args + ['--model-tag', 'full'], bd, env={'NANOLIT_TEST_ENOSPC_AT_STEP': '2'}, check=False)
    one_line_error(res, 'no space left to save step 2', 'MiB are free', 'Nothing partial was left')
    assert sorted(p.name for p in run_dir(bd, 'base_checkpoints', 'full').iterdir() if p.name.startswith(('step', '.tmp'))) == []
    # a real 256 KiB file system under the run directory, where the machine allows mounting one
    d = run_dir(bd, 'base_checkpoints', 'tiny_fs'); d.mkdir(parents=True)
    if not mount('-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(d)): pytest.skip('cannot mount a small tmpfs here (not root?)')
    try:
        res = stage('nanolit.base_train', args + ['--model-tag', 'tiny_fs'], bd, check=False)
        one_line_error(res, 'no space left to save step 2', 'MiB are free')
        assert not [p for p in d.iterdir() if p.name.startswith(('step', '.tmp'))]
    finally: subprocess.run(['umount', str(d)])

def test_a_read_only_base_directory_fails_in_one_line(bd, tmp_path):
    ro = tmp_path / 'ro'; ro.mkdir()
    if not mount('--bind', str(bd), str(ro)): pytest.skip('cannot bind-mount here (not root?)')
    try:
        if not mount('-o', 'remount,ro,bind', str(ro)): pytest.skip('cannot remount read-only here')
        res = stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'ro'], ro, check=False)
        one_line_error(res, 'Read-only file system', str(ro))
    finally: subprocess.run(['umount', str(ro)])
