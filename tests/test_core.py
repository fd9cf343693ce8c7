"""CORE end to end on the fixture bundle with a tiny real GPT: one call, 1 and 2 processes under torchrun (gloo)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import TESTS, WORKERS, run, torchrun_cmd
from nanolit.core import evaluate_core, read_bundle
from nanolit.model import GPT, GPTConfig
from nanolit.tokenizer import Tokenizer

BUNDLE = TESTS / 'fixtures' / 'core_bundle'

@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory) -> Path:
    "A small tokenizer trained on the fixture's text, saved once so that every process loads the same one."
    texts = [l for p in sorted(BUNDLE.rglob('*.jsonl')) for l in p.read_text().splitlines()]
    d = tmp_path_factory.mktemp('core_tok')
    Tokenizer.train(texts * 4, vocab_size=400).save(d)
    return d

def test_core_one_call_on_a_tiny_gpt(tokenizer_dir):
    tok = Tokenizer.from_directory(tokenizer_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64))
    out = evaluate_core(model, tok, BUNDLE, max_per_task=-1, device='cpu', log=None)
    labels = [t.label for t in read_bundle(BUNDLE)]
    assert list(out['tasks']) == labels and all(out['tasks'][k]['examples'] == 5 for k in labels)
    assert abs(out['core'] - sum(r['centered'] for r in out['tasks'].values()) / len(labels)) < 1e-12
    assert model.training   # given back in training mode
    alone = evaluate_core(model, tok, BUNDLE, device='cpu', tasks='hellaswag', log=None)
    assert list(alone['tasks']) == ['hellaswag'] and alone['tasks']['hellaswag'] == {**out['tasks']['hellaswag'], 'seconds': alone['tasks']['hellaswag']['seconds']}

def test_core_counts_identical_on_one_and_two_processes(tokenizer_dir, tmp_path):
    results = {}
    for nproc in (1, 2):
        path = tmp_path / f'core_{nproc}.json'
        res = run(torchrun_cmd(nproc, WORKERS / 'core_ddp.py', BUNDLE, tokenizer_dir, path), timeout=180)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert res.stdout.count('CORE metric:') == 1, res.stdout   # printed by rank 0 only
        results[nproc] = json.loads(path.read_text())
    assert results[1]['counts'] == results[2]['counts'], results
    assert all(n == 5 for _, n in results[1]['counts'].values())
    assert results[1]['core'] == results[2]['core']
