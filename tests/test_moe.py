"""Mixture-of-Experts MLPs (chapter 3b) through the stages: a MoE base model trains and balances its experts,
midtraining and chat rebuild it from the checkpoint's config (the routing bias travels as a buffer in the state dict),
greedy chat prints the engine's tokens, a SIGTERM and resume is bitwise the straight run, and 2 processes equal 1
process with twice the accumulation (the load counts summed over micro-batches and ranks alike) and 3 processes equal 1
with three times, a resume with other expert flags fails with one line, and a compiled MoE model computes what the
eager one does."""
import json

import pytest
import torch

from conftest import (MID, TINY, base_dir_with_tokenizer, chat_is_engine_greedy, compiled_equals_eager, losses, max_rel, meta,
                      needs_cxx, one_line_error, run_dir, stage, stopped_and_straight, two_and_one_process, weights)
from nanolit.model import GPTConfig, build_model, randomize_

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

def test_mid_sft_eval_and_chat_rebuild_the_model(base_moe, monkeypatch):
    bd = base_moe
    stage('nanolit.midtrain', MID + ['--model-tag', 'moe', '--num-iterations', '2', '--output-tag', 'moem'], bd)
    mid, base = weights(bd, 'mid_checkpoints', 'moem'), weights(bd, 'base_checkpoints', 'moe')
    assert mid['blocks.0.mlp.w_fc'].shape == base['blocks.0.mlp.w_fc'].shape
    assert not torch.equal(mid['blocks.0.mlp.expert_bias'], base['blocks.0.mlp.expert_bias'])   # mid goes on balancing
    assert len(moe_loads(bd, 'mid_checkpoints', 'moem')) == 2
    stage('nanolit.sft', MID + ['--model-tag', 'moem', '--num-iterations', '2', '--output-tag', 'moes'], bd)
    assert len(moe_loads(bd, 'chatsft_checkpoints', 'moes')) == 2                              # SFT balances too
    stage('nanolit.eval', ['--source', 'sft', '--model-tag', 'moes', '--tasks', 'SpellingBee', '--max-problems', '2',
                           '--max-tokens', '4'], bd)
    model = chat_is_engine_greedy(bd, 'sft', 'moes', monkeypatch)
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

# 3 processes: one row of 64 tokens per micro-batch, 768 a step (4 micro-batches each, or 12 on one process); the
# width (64), the vocabulary (512), the 4 experts and their width (85) do not divide by 3
W3 = ['--depth', '2', '--aspect-ratio', '32', '--head-dim', '32', '--max-seq-len', '64', '--device-batch-size', '1',
      '--total-batch-size', '768', '--eval-every', '-1', '--eval-tokens', '192', '--matrix-lr', '0.2', '--embedding-lr', '2.0',
      '--unembedding-lr', '0.05', '--target-param-data-ratio', '-1', '--num-iterations', '3'] + MOE

def test_three_processes_equal_one_with_three_times_the_accumulation(base_moe):
    stage('nanolit.base_train', W3 + ['--model-tag', 'moew3'], base_moe, nproc=3)
    stage('nanolit.base_train', W3 + ['--model-tag', 'moew3one'], base_moe)
    three, one = losses(base_moe, 'base_checkpoints', 'moew3'), losses(base_moe, 'base_checkpoints', 'moew3one')
    assert len(three) == 3 and max(abs(a - b) / abs(b) for a, b in zip(three, one)) <= 1e-5, (three, one)
    assert moe_loads(base_moe, 'base_checkpoints', 'moew3') == moe_loads(base_moe, 'base_checkpoints', 'moew3one')
    w3, w1 = weights(base_moe, 'base_checkpoints', 'moew3'), weights(base_moe, 'base_checkpoints', 'moew3one')
    assert max_rel(w3, w1) <= 1e-5
    assert all(torch.equal(w3[f'blocks.{i}.mlp.expert_bias'], w1[f'blocks.{i}.mlp.expert_bias']) for i in (0, 1))

def test_resume_with_other_experts_is_a_one_line_error(base_moe):
    args = TINY + ['--num-iterations', '2', '--model-tag', 'moecut']
    stage('nanolit.base_train', args + MOE, base_moe, env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': '1'}, expect=143)
    other = [a if a != '4' else '8' for a in MOE]   # --moe-num-experts 8 instead of 4
    res = stage('nanolit.base_train', args + other, base_moe, check=False)
    one_line_error(res, '--moe-num-experts 4 -> 8', 'pass the values it was started with')

@needs_cxx
def test_compiled_equals_eager():
    "The whole GPT with a MoE layer (a shared expert: the float32 loop path, with its graph breaks) and a dense one."
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=64, vocab_size=500, n_layer=3, n_head=2, n_kv_head=1, n_embd=64, short_window=16,
                    moe_layers='0,2', moe_num_experts=4, moe_top_k=2, moe_shared_expert=True)
    model = randomize_(build_model(cfg), std=0.05)   # the expert projections start at zero: noise makes every gradient non-trivial
    idx, targets = torch.randint(0, 500, (4, 64)), torch.randint(0, 500, (4, 64))
    compiled_equals_eager(model, idx, targets)
    loads = [m.expert_load.clone() for m in model.modules() if hasattr(m, 'expert_load')]
    assert all(l.sum() == 2 * 2 * 4 * 64 for l in loads), loads   # both passes counted every token's 2 slots, compiled too
