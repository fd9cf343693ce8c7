"""Large lookup layers (chapter 3a) through the stages: an L3 base model trains, midtraining, SFT, eval and chat rebuild it from the
checkpoint (the allocation travels as a buffer in the state dict), greedy chat prints the engine's tokens, a SIGTERM
and resume is bitwise the straight run, 2 processes equal 1 process with twice the accumulation and 3 equal 1 with three
times, a resume with the L3 flags left off fails with one line, and a compiled L3 model computes what the eager one does."""

import pytest
import torch

from conftest import (MID, TINY, base_dir_with_tokenizer, chat_is_engine_greedy, compiled_equals_eager, losses, max_rel, meta,
                      needs_cxx, one_line_error, stage, stopped_and_straight, two_and_one_process, weights)
from nanolit.model import GPTConfig, build_model, randomize_

L3 = ['--l3-after-layers', '0', '--l3-sample-tokens', '20000', '--l3-k-max', '16']

@pytest.fixture(scope='module')
def bd(tmp_path_factory): return base_dir_with_tokenizer(tmp_path_factory, 'l3')

@pytest.fixture(scope='module')
def base_l3(bd):
    "A 4-step L3 base run (tag l3): the checkpoint the other tests start from."
    stage('nanolit.base_train', TINY + L3 + ['--num-iterations', '4', '--model-tag', 'l3'], bd)
    return bd

def test_base_saves_config_and_allocation(base_l3):
    cfg = meta(base_l3, 'base_checkpoints', 'l3')['model_config']
    assert cfg['l3_after_layers'] == '0' and cfg['l3_k_max'] == 16 and cfg['l3_n_emb'] == 12 * 2 * 64
    w = weights(base_l3, 'base_checkpoints', 'l3')
    rows = w['l3.0.bounds'].diff()
    assert rows.sum() == cfg['l3_n_emb'] and rows.min() >= 1 and rows.max() <= 16 and rows.max() > rows.min()
    assert w['l3.0.mix.weight'].abs().max() > 0   # trained away from its zero start

def test_mid_sft_eval_and_chat_rebuild_the_model(base_l3, monkeypatch):
    bd = base_l3
    stage('nanolit.midtrain', MID + ['--model-tag', 'l3', '--num-iterations', '2', '--output-tag', 'l3m'], bd)
    assert torch.equal(weights(bd, 'mid_checkpoints', 'l3m')['l3.0.bounds'], weights(bd, 'base_checkpoints', 'l3')['l3.0.bounds'])
    stage('nanolit.sft', MID + ['--model-tag', 'l3m', '--num-iterations', '2', '--output-tag', 'l3s'], bd)
    assert torch.equal(weights(bd, 'chatsft_checkpoints', 'l3s')['l3.0.bounds'], weights(bd, 'base_checkpoints', 'l3')['l3.0.bounds'])
    stage('nanolit.eval', ['--source', 'sft', '--model-tag', 'l3s', '--tasks', 'SpellingBee', '--max-problems', '2',
                           '--max-tokens', '4'], bd)
    chat_is_engine_greedy(bd, 'sft', 'l3s', monkeypatch)

def test_sigterm_resume_is_bitwise(base_l3):
    stop, straight = stopped_and_straight(base_l3, TINY + L3 + ['--num-iterations', '6'], 'l3')
    a, b = weights(base_l3, 'base_checkpoints', stop), weights(base_l3, 'base_checkpoints', straight)
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])]

def test_two_processes_equal_one_with_twice_the_accumulation(base_l3):
    # 512 tokens a step = 2 ranks × 2 micro-batches = 1 rank × 4
    two, one = two_and_one_process(base_l3, TINY + L3 + ['--num-iterations', '3'], 'l3')
    assert len(losses(base_l3, 'base_checkpoints', one)) == 3
    assert max_rel(weights(base_l3, 'base_checkpoints', two), weights(base_l3, 'base_checkpoints', one)) <= 1e-5

# 3 processes: one row of 64 tokens per micro-batch, 768 a step (4 micro-batches each, or 12 on one process); the
# width (64), the vocabulary (512) and the table (1,000 rows) do not divide by 3
W3 = ['--depth', '2', '--aspect-ratio', '32', '--head-dim', '32', '--max-seq-len', '64', '--device-batch-size', '1',
      '--total-batch-size', '768', '--eval-every', '-1', '--eval-tokens', '192', '--matrix-lr', '0.2', '--embedding-lr', '2.0',
      '--unembedding-lr', '0.05', '--target-param-data-ratio', '-1', '--num-iterations', '3',
      '--l3-after-layers', '0', '--l3-n-emb', '1000', '--l3-sample-tokens', '20000', '--l3-k-max', '16']

def test_three_processes_equal_one_with_three_times_the_accumulation(base_l3):
    stage('nanolit.base_train', W3 + ['--model-tag', 'l3w3'], base_l3, nproc=3)
    stage('nanolit.base_train', W3 + ['--model-tag', 'l3w3one'], base_l3)
    three, one = losses(base_l3, 'base_checkpoints', 'l3w3'), losses(base_l3, 'base_checkpoints', 'l3w3one')
    assert len(three) == 3 and max(abs(a - b) / abs(b) for a, b in zip(three, one)) <= 1e-5, (three, one)
    w3, w1 = weights(base_l3, 'base_checkpoints', 'l3w3'), weights(base_l3, 'base_checkpoints', 'l3w3one')
    assert torch.equal(w3['l3.0.bounds'], w1['l3.0.bounds']) and max_rel(w3, w1) <= 1e-5

def test_resume_without_the_l3_flags_is_a_one_line_error(base_l3):
    args = TINY + ['--num-iterations', '2', '--model-tag', 'l3cut']
    stage('nanolit.base_train', args + L3, base_l3, env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': '1'}, expect=143)
    res = stage('nanolit.base_train', args, base_l3, check=False)   # the same run, the L3 flags forgotten
    one_line_error(res, '--l3-after-layers 0 -> ', 'pass the values it was started with')

@needs_cxx
def test_compiled_equals_eager():
    "The whole GPT with two L3 layers (one tied) and an uneven allocation: loss and every gradient, compiled and eager."
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=64, vocab_size=500, n_layer=3, n_head=2, n_kv_head=1, n_embd=64, short_window=16,
                    l3_after_layers='0,2', l3_n_emb=1800, l3_k_max=9)
    model = randomize_(build_model(cfg), std=0.05)   # the mix matrices start at zero: noise makes every gradient non-trivial
    rows = torch.ones(500, dtype=torch.long); rows[:150] = 9; rows[150:200] = 3   # 150·9 + 50·3 + 300 = 1800
    for l3 in model.l3.values(): l3.set_allocation(rows)
    idx, targets = torch.randint(0, 500, (4, 64)), torch.randint(0, 500, (4, 64))
    grads_e = compiled_equals_eager(model, idx, targets)
    assert grads_e['l3.2.keys'].abs().sum() > 0
