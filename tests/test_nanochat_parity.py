"""nanolit loads nanochat's checkpoints and computes nanochat's logits.

The fixtures under tests/fixtures/nanochat_<version>/ were written by nanochat itself (92d63d4, and an October 2025
commit before value embeddings and sliding windows): a d2 model after 4 steps, its meta json and optimizer files, and
`reference.pt` with fixed inputs and nanochat's fp32 CPU logits and losses on them. nanochat is not imported here."""
import glob
import json
from pathlib import Path

import pytest
import torch

import nanolit.optim  # noqa: F401  (adds GPT.setup_optimizer)
from nanolit.model import GPT, from_nanochat
from nanolit.optim import optimizer_state_from_nanochat

FIXTURES = Path(__file__).parent / 'fixtures'
VERSIONS = ['nanochat_92d63d4', 'nanochat_oct2025']

def fixture(version):
    root = FIXTURES / version
    if not (root / 'reference.pt').exists():
        pytest.skip(f'no nanochat fixture at {root}: write one with nanochat (see this file\'s docstring)')
    return root, root / 'base_checkpoints' / 'd2'

def load(version, step=4):
    root, ckpt = fixture(version)
    meta = json.loads((ckpt / f'meta_{step:06d}.json').read_text())
    config, sd = from_nanochat(torch.load(ckpt / f'model_{step:06d}.pt', map_location='cpu'), meta['model_config'])
    model = GPT(config); model.load_state_dict(sd, strict=True)
    return model, torch.load(root / 'reference.pt', map_location='cpu', weights_only=True), ckpt

@pytest.mark.parametrize('version', VERSIONS)
def test_logits_and_loss_match_nanochat(version):
    model, ref, _ = load(version)
    with torch.no_grad():
        for n in ('short', 'long'):   # 32 tokens, and 256 (past the sliding window of the 92d63d4 model)
            torch.testing.assert_close(model(ref[f'{n}_inputs']), ref[f'{n}_logits'], rtol=0, atol=1e-5)
            torch.testing.assert_close(model(ref[f'{n}_inputs'], ref[f'{n}_targets']), ref[f'{n}_loss'], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(model(ref[f'{n}_inputs'], ref[f'{n}_targets'], loss_reduction='none'),
                                       ref[f'{n}_loss_per_token'], rtol=1e-5, atol=1e-5)

def test_features_follow_the_checkpoint():
    new, old = load('nanochat_92d63d4')[0].config, load('nanochat_oct2025')[0].config
    assert (new.value_embeds, new.smear, new.backout, new.qk_scale, new.rope_base) == (True, True, True, 1.2, 1e5)
    assert (old.value_embeds, old.smear, old.backout, old.qk_scale, old.rope_base) == (False, False, False, 1.0, 1e4)
    assert old.window_pattern == 'L' and old.rope_bf16

@pytest.mark.parametrize('version', VERSIONS)
def test_optimizer_state_converts(version):
    model, _, ckpt = load(version)
    files = sorted(glob.glob(str(ckpt / 'optim_000004*.pt')))
    shards = [torch.load(f, map_location='cpu', weights_only=False) for f in files]
    opt = model.setup_optimizer()
    opt.load_state_dict(optimizer_state_from_nanochat(shards, model, opt))
    mats = [p for g in opt.param_groups if g['kind'] == 'muon' for p in g['params']]
    assert all('momentum_buffer' in opt.state[p] for p in mats)                 # every matrix warm-started
    assert opt.state[model.lm_head.weight]['step'].item() == 4
    if version == 'nanochat_92d63d4':   # the first matrix of each Muon group carries the group's stacked state
        nc, i = shards[0], 0
        for g_nc, g in zip(nc['param_groups'], opt.param_groups):
            if g['kind'] == 'muon':
                st = nc['state'][g_nc['params'][0]]
                for c, p in enumerate(g['params']):
                    assert torch.equal(opt.state[p]['momentum_buffer'], st['momentum_buffer'][c].float())
                    assert torch.equal(opt.state[p]['second_moment'], st['second_momentum_buffer'][c].float())
    ids = torch.randint(0, model.config.vocab_size, (2, 33))
    model(ids[:, :-1], ids[:, 1:]).backward(); opt.step()                       # and training continues
    assert all(torch.isfinite(p).all() for p in model.parameters())
