"""The stage flags mean what they mean in nanochat's scripts: in midtraining and SFT `--model-tag`/`--model-step` name
the checkpoint to start from (the output goes under the same tag unless `--output-tag`); weight decay is 0 there unless
given; SFT ramps Muon's momentum and starts at 0.8 of the inherited learning rates; a missing optimizer state is a
warning and a fresh optimizer; `--dry-run` writes nothing; `--resume-from-step N` resumes from step N and moves the
later checkpoints aside; `--eval-every -1` means no evaluation in pretraining, and only the final one after it."""
import json
import time

import pytest
import torch

from conftest import MID, TINY, base_dir_with_tokenizer, losses, meta, run_dir, stage

@pytest.fixture(scope='module')
def bd(tmp_path_factory):
    "A base directory with two finished base runs: 'a' (checkpoints every 2 steps) and then 'b'."
    d = base_dir_with_tokenizer(tmp_path_factory, 'flags')
    stage('nanolit.base_train', TINY + ['--num-iterations', '6', '--save-every', '2', '--keep-last', '3', '--model-tag', 'a'], d)
    time.sleep(0.05)
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'b'], d)
    return d

def records(bd, stage_dir, tag): return [json.loads(l) for l in (run_dir(bd, stage_dir, tag) / 'metrics.jsonl').read_text().splitlines()]

def shard_groups(bd, stage_dir, tag):
    d = run_dir(bd, stage_dir, tag)
    step = max(int(p.name[5:]) for p in d.glob('step_*'))
    return torch.load(d / f'step_{step:06d}' / 'optim_rank0.pt', weights_only=True)['groups']

def test_model_tag_names_the_source_and_mid_sft_defaults(bd):
    # 'b' is the newest base run; --model-tag a must start from 'a', and write under mid_checkpoints/a
    res = stage('nanolit.midtrain', MID + ['--num-iterations', '2', '--model-tag', 'a'], bd)
    m = meta(bd, 'mid_checkpoints', 'a')
    assert m['parent'] == {'stage': 'base', 'tag': 'a', 'step': 6}, m['parent']
    assert m['effective']['weight_decay'] == 0.0                              # not the base run's 0.2
    # the old spelling still works, with a notice; an explicit weight decay is kept
    res = stage('nanolit.midtrain', MID + ['--num-iterations', '2', '--source-tag', 'a', '--output-tag', 'wd', '--weight-decay', '0.1'], bd)
    assert 'note: --source-tag is the old spelling of --model-tag' in res.stdout
    assert meta(bd, 'mid_checkpoints', 'wd')['effective']['weight_decay'] == 0.1
    # SFT from mid/a: 0.8 of the inherited learning rates, Muon momentum ramped as in pretraining, weight decay 0
    stage('nanolit.sft', MID + ['--num-iterations', '2', '--model-tag', 'a'], bd)
    sft, mid = meta(bd, 'chatsft_checkpoints', 'a'), meta(bd, 'mid_checkpoints', 'a')
    assert sft['effective']['matrix_lr'] == pytest.approx(0.8 * mid['user_config']['matrix_lr'])
    assert sft['effective']['weight_decay'] == 0.0
    muon = [g for g in shard_groups(bd, 'chatsft_checkpoints', 'a') if g['kind'] == 'muon']
    assert muon and all(g['momentum'] == pytest.approx(0.85 + 0.10 * 1 / 300) for g in muon)   # set for the 2nd step

def test_missing_optimizer_state_warns_and_starts_fresh(bd):
    d = run_dir(bd, 'base_checkpoints', 'b') / 'step_000002'
    (d / 'optim_rank0.pt').unlink()
    res = stage('nanolit.midtrain', MID + ['--num-iterations', '1', '--model-tag', 'b', '--load-optimizer', '1'], bd)
    assert 'has no optimizer state: starting with a fresh optimizer' in res.stdout, res.stdout[-2000:]

def test_dry_run_writes_nothing(bd):
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'dry', '--dry-run'], bd)
    stage('nanolit.midtrain', MID + ['--num-iterations', '2', '--model-tag', 'a', '--output-tag', 'dry', '--dry-run'], bd)
    assert not run_dir(bd, 'base_checkpoints', 'dry').exists() and not run_dir(bd, 'mid_checkpoints', 'dry').exists()

def test_resume_from_step_moves_later_checkpoints_aside(bd):
    straight = losses(bd, 'base_checkpoints', 'a')
    before = torch.load(run_dir(bd, 'base_checkpoints', 'a') / 'step_000006' / 'model.pt')
    res = stage('nanolit.base_train', TINY + ['--num-iterations', '6', '--save-every', '2', '--keep-last', '3', '--model-tag', 'a',
                                              '--resume-from-step', '4'], bd)
    assert 'from step 4' in res.stdout, res.stdout[-2000:]
    aside = list(run_dir(bd, 'base_checkpoints', 'a').glob('superseded_*/step_000006'))
    assert len(aside) == 1                                                   # moved, never deleted
    assert losses(bd, 'base_checkpoints', 'a') == straight                  # steps 5 and 6 again, exactly
    after = torch.load(run_dir(bd, 'base_checkpoints', 'a') / 'step_000006' / 'model.pt')
    assert all(torch.equal(before[k], after[k]) for k in before)

def test_eval_every_minus_one(bd):
    assert not [r for r in records(bd, 'base_checkpoints', 'a') if 'val/val_bpb' in r]     # pretraining: none
    vals = [r for r in records(bd, 'mid_checkpoints', 'a') if 'val/mix_bpb' in r]
    assert [r['step'] for r in vals] == [2]                                               # mid: only after the last step
