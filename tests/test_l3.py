"""Large lookup layers (chapter 3a) through the stages: an L3 base model trains, midtraining and chat rebuild it from the
checkpoint (the allocation travels as a buffer in the state dict), greedy chat prints the engine's tokens, a SIGTERM
and resume is bitwise the straight run, and 2 processes equal 1 process with twice the accumulation."""

import pytest
import torch

from conftest import MID, TINY, base_dir_with_tokenizer, chat_is_engine_greedy, losses, max_rel, meta, stage, stopped_and_straight, two_and_one_process, weights

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

def test_mid_and_chat_rebuild_the_model(base_l3, monkeypatch):
    bd = base_l3
    stage('nanolit.midtrain', MID + ['--model-tag', 'l3', '--num-iterations', '2', '--output-tag', 'l3m'], bd)
    assert torch.equal(weights(bd, 'mid_checkpoints', 'l3m')['l3.0.bounds'], weights(bd, 'base_checkpoints', 'l3')['l3.0.bounds'])
    chat_is_engine_greedy(bd, 'mid', 'l3m', monkeypatch)

def test_sigterm_resume_is_bitwise(base_l3):
    stop, straight = stopped_and_straight(base_l3, TINY + L3 + ['--num-iterations', '6'], 'l3')
    a, b = weights(base_l3, 'base_checkpoints', stop), weights(base_l3, 'base_checkpoints', straight)
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])]

def test_two_processes_equal_one_with_twice_the_accumulation(base_l3):
    # 512 tokens a step = 2 ranks × 2 micro-batches = 1 rank × 4
    two, one = two_and_one_process(base_l3, TINY + L3 + ['--num-iterations', '3'], 'l3')
    assert len(losses(base_l3, 'base_checkpoints', one)) == 3
    assert max_rel(weights(base_l3, 'base_checkpoints', two), weights(base_l3, 'base_checkpoints', one)) <= 1e-5
