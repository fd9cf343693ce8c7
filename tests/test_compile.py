"""`torch.compile` of the model, on the CPU: one graph (no breaks), and the same loss and gradients as eager mode.

The fused head + soft-cap + cross-entropy (`SoftcapCrossEntropy`, chapter 03) is traced by the compiler rather than
run as an eager island, so these tests check that the traced version computes what the eager one does, in float32
and under bf16 autocast (the CPU's autocast stands in for the GPU's, which cannot be run here).
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import max_rel, needs_cxx
from nanolit.model import GPT, GPTConfig, randomize_, softcap_cross_entropy

pytestmark = needs_cxx

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=64, vocab_size=1000, n_layer=3, n_head=2, n_kv_head=1, n_embd=64, short_window=16)   # 3: backout acts
    model = randomize_(GPT(cfg), std=0.05)   # no zero-initialised projections: every gradient is non-trivial
    idx = torch.randint(0, 1000, (4, 64)); targets = torch.randint(0, 1000, (4, 64)); targets[:, :5] = -1
    return model, torch.compile(model, fullgraph=True, dynamic=False), idx, targets

def loss_and_grads(model, fwd, idx, targets):
    model.zero_grad(set_to_none=True)
    loss = fwd(idx, targets); loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

def all_rel(g, ref):
    "The relative L2 difference of all gradients taken as one vector."
    flat = lambda d: torch.cat([d[n].flatten() for n in ref])
    return ((flat(g) - flat(ref)).norm() / flat(ref).norm()).item()

def test_compiled_matches_eager_float32(setup):
    model, compiled, idx, targets = setup
    loss_e, grads_e = loss_and_grads(model, model, idx, targets)
    loss_c, grads_c = loss_and_grads(model, compiled, idx, targets)
    assert abs(loss_c - loss_e) <= 1e-6 * loss_e
    assert max_rel(grads_c, grads_e) < 1e-4
    with torch.no_grad():   # evaluation's per-token losses: the forward-only branch of the fused head
        torch.testing.assert_close(compiled(idx, targets, loss_reduction='none'),
                                   model(idx, targets, loss_reduction='none'), rtol=1e-5, atol=1e-5)

def test_compiled_matches_eager_bf16_autocast(setup):
    model, compiled, idx, targets = setup
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss_e, grads_e = loss_and_grads(model, model, idx, targets)
        loss_c, grads_c = loss_and_grads(model, compiled, idx, targets)
    _, grads_32 = loss_and_grads(model, model, idx, targets)
    assert all(g.dtype == torch.float32 for g in grads_c.values())
    assert abs(loss_c - loss_e) <= 5e-3 * loss_e
    # Compiled and eager round in different places, so they differ by about bf16's rounding (~1%), as eager bf16
    # differs from float32; a single scalar's gradient (a sum with cancellation) can differ a few times more.
    compiled_vs_eager, bf16_vs_fp32 = all_rel(grads_c, grads_e), all_rel(grads_e, grads_32)
    assert bf16_vs_fp32 > 1e-3                        # autocast did take effect...
    assert compiled_vs_eager < 2 * bf16_vs_fp32       # ...and compiled differs from eager by no more than that
    assert max_rel(grads_c, grads_32) < 0.1

@pytest.mark.parametrize('vocab,softcap', [(1000, 15.0), (997, 15.0), (1000, 90.0)])
def test_compiled_fused_head_matches_plain_path(vocab, softcap):
    "The compiled branch of the fused head: one-exp tanh, max-free (or, for a large cap, shifted) log-sum-exp, the "
    "two-stage sum (vocab divisible by 8) or one stage (997), the one-hot by comparison; 3 chunks, the last partial."
    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True); W = (torch.randn(vocab, 32) * 0.3).requires_grad_()
    tg = torch.randint(0, vocab, (300,)); tg[::7] = -1
    plain = lambda: F.cross_entropy(softcap * torch.tanh((h @ W.T) / softcap), tg, ignore_index=-1)
    fused = torch.compile(lambda: softcap_cross_entropy(h, W, tg, softcap, 'mean', chunk=128), fullgraph=True)
    ref = plain(); ref.backward(); grads = h.grad.clone(), W.grad.clone(); h.grad = W.grad = None
    out = fused(); out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close((h.grad, W.grad), grads, rtol=1e-4, atol=1e-7)
