"""A base directory written by nanochat works as NANOLIT_BASE_DIR: its tokenizer.pkl, its flat checkpoint files and
its optimizer shards, through nanolit's command lines (midtraining under a 2-process torchrun with the optimizer
warm-started from nanochat's, then SFT, evaluation and chat). The fixture was made by nanochat's own code
(tests/fixtures/nanochat_92d63d4/README.md); it is copied first, since the stages write beside it."""
import json
import shutil

import pytest

from conftest import TESTS, meta, stage, run
import sys

FIXTURE = TESTS / 'fixtures' / 'nanochat_92d63d4'

@pytest.fixture(scope='module')
def nc(tmp_path_factory):
    d = tmp_path_factory.mktemp('nanochat') / 'base'
    shutil.copytree(FIXTURE, d)
    return d

def test_nanochat_base_dir_through_the_clis(nc):
    # 3 midtraining steps on 2 processes, from nanochat's step-4 checkpoint, with its optimizer state
    res = stage('nanolit.midtrain', ['--model-tag', 'd2', '--load-optimizer', '1', '--num-iterations', '3',
                                     '--device-batch-size', '2', '--replay-ratio', '0', '--mixture-scale', '0.02',
                                     '--eval-tokens', '1024', '--chatcore-every', '-1'], nc, nproc=2)
    assert 'warm-started the optimizer' in res.stdout, res.stdout[-3000:]
    m = meta(nc, 'mid_checkpoints', 'd2')
    assert m['finished'] and m['parent'] == {'stage': 'base', 'tag': 'd2', 'step': 4}
    assert m['user_config']['total_batch_size'] == 1024                     # inherited from nanochat's meta
    # SFT from it, then evaluation and chat on nanochat's own base checkpoint
    stage('nanolit.sft', ['--model-tag', 'd2', '--num-iterations', '2', '--device-batch-size', '2', '--mixture-scale', '0.02',
                          '--eval-tokens', '512', '--chatcore-every', '-1'], nc)
    out = nc / 'eval.json'
    stage('nanolit.eval', ['--source', 'base', '--model-tag', 'd2', '--tasks', 'Arithmetic', '--max-problems', '2',
                           '--max-tokens', '4', '--out', str(out)], nc)
    assert json.loads(out.read_text())['results'][0]['problems'] == 2
    res = run([sys.executable, '-m', 'nanolit.chat', '--source', 'base', '--model-tag', 'd2', '--prompt', 'hello',
               '--max-tokens', '4'], {'NANOLIT_BASE_DIR': str(nc)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (nc / 'base_checkpoints' / 'd2').iterdir()) == sorted(
        p.name for p in (FIXTURE / 'base_checkpoints' / 'd2').iterdir())   # nanochat's files are only read
