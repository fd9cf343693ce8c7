"""Mixture-of-Experts MLPs (chapter 3b) through the stages: a MoE base model trains and balances its experts,
midtraining and chat rebuild it from the checkpoint's config (the routing bias travels as a buffer in the state dict),
greedy chat prints the engine's tokens, a SIGTERM and resume is bitwise the straight run, and 2 processes equal 1
process with twice the accumulation (the load counts summed over micro-batches and ranks alike)."""
import json

import pytest
import torch

from conftest import MID, TINY, base_dir_with_tokenizer, chat_is_engine_greedy, losses, max_rel, meta, run_dir, stage, stopped_and_straight, two_and_one_process, weights

# both layers MoE, 4 experts, 2 per token and a shared one; a bias rate large enough to move routing in a few steps
MOE = ['--moe-layers', 'all', '--moe-num-experts', '4', '--moe-top-k', '2', '--moe-shared-expert', '1',
       '--moe-bias-update-rate', '0.01']

def moe_loads(bd, stage_dir, tag) -> list:
    "The per-step expert loads logged in a run's metrics.jsonl."
    lines = (run_dir(bd, stage_dir, tag) / 'metrics.jsonl').read_text().splitlines()
    return [r['moe_load'] for r in map(json.loads, lines) if 'moe_load' in r]

@pytest.fixture(scope='module')
def bd(tmp_path_factory): return base_dir_with_tokenizer(tmp_path_factory, 'moe')

@pytest.fixture(scope='module')
def base_moe(bd):
    "A 4-step MoE base run (tag moe): the checkpoint the other tests start from."
    stage('nanolit.base_train', TINY + MOE + ['--num-iterations', '4', '--model-tag', 'moe'], bd)
    return bd

def test_base_saves_config_balances_and_logs_loads(base_moe):
    cfg = meta(base_moe, 'base_checkpoints', 'moe')['model_config']
    assert (cfg['moe_layers'], cfg['moe_num_experts'], cfg['moe_top_k'], cfg['moe_shared_expert']) == ('0,1', 4, 2, True)
    assert cfg['moe_hidden'] == 4 * 64 // 3 and cfg['moe_bias_update_rate'] == 0.01   # resolved, so mid/SFT rebuild it
    w = weights(base_moe, 'base_checkpoints', 'moe')
    assert w['blocks.0.mlp.w_fc'].shape == (4, 85, 64) and 'blocks.0.mlp.c_fc.weight' not in w
    assert w['blocks.1.mlp.expert_bias'].abs().max() > 0                   # the balancing moved the bias
    assert w['blocks.1.mlp.expert_load'].sum() == 0                        # counts reset at every step, so saved empty
    assert w['blocks.0.mlp.w_proj'].abs().max() > 0                        # trained away from its zero start
    loads = moe_loads(base_moe, 'base_checkpoints', 'moe')
    assert len(loads) == 4 and all(sum(layer) == 512 * 2 for step in loads for layer in step)   # every token, k slots

def test_mid_and_chat_rebuild_the_model(base_moe, monkeypatch):
    bd = base_moe
    stage('nanolit.midtrain', MID + ['--model-tag', 'moe', '--num-iterations', '2', '--output-tag', 'moem'], bd)
    mid, base = weights(bd, 'mid_checkpoints', 'moem'), weights(bd, 'base_checkpoints', 'moe')
    assert mid['blocks.0.mlp.w_fc'].shape == base['blocks.0.mlp.w_fc'].shape
    assert not torch.equal(mid['blocks.0.mlp.expert_bias'], base['blocks.0.mlp.expert_bias'])   # mid goes on balancing
    assert len(moe_loads(bd, 'mid_checkpoints', 'moem')) == 2
    model = chat_is_engine_greedy(bd, 'mid', 'moem', monkeypatch)
    assert all(m.expert_load.sum() == 0 for m in model.modules() if hasattr(m, 'expert_load'))   # eval counts nothing

def test_sigterm_resume_is_bitwise(base_moe):
    stop, straight = stopped_and_straight(base_moe, TINY + MOE + ['--num-iterations', '6'], 'moe')
    assert moe_loads(base_moe, 'base_checkpoints', stop) == moe_loads(base_moe, 'base_checkpoints', straight)
    a, b = weights(base_moe, 'base_checkpoints', stop), weights(base_moe, 'base_checkpoints', straight)
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])]

def test_two_processes_equal_one_with_twice_the_accumulation(base_moe):
    # 512 tokens a step = 2 ranks × 2 micro-batches = 1 rank × 4
    two, one = two_and_one_process(base_moe, TINY + MOE + ['--num-iterations', '3'], 'moe')
    assert len(losses(base_moe, 'base_checkpoints', one)) == 3
    # the loads are global: all-reduced over ranks, the same counts as one process's over its micro-batches
    assert moe_loads(base_moe, 'base_checkpoints', two) == moe_loads(base_moe, 'base_checkpoints', one)
    w2, w1 = weights(base_moe, 'base_checkpoints', two), weights(base_moe, 'base_checkpoints', one)
    assert max_rel(w2, w1) <= 1e-5
    assert all(torch.equal(w2[f'blocks.{i}.mlp.expert_bias'], w1[f'blocks.{i}.mlp.expert_bias']) for i in (0, 1))
