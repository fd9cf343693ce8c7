"""The CUDA paths that CPU machines cannot run: bf16 autocast, torch.compile, Flash-Attention 3, FP8 through
`torch._scaled_mm`, and NCCL. Every test here is marked `gpu` and skips without a CUDA GPU, so the default suite passes
over them at once; `bench/gpu_check.sh` runs them (`pytest -m gpu`) on a GPU machine.

Run under torchrun, this file is also the NCCL worker: `torchrun --nproc_per_node N tests/test_gpu.py` puts every rank on
the GPU `local_rank % device count` (two ranks may share one GPU, where NCCL allows it) and exercises every collective of
nanolit.common, the optimizer's (all-reduce, reduce-scatter, all-gather, asynchronous), `evaluate_bpb`'s and
`nanolit_eval`'s."""
import os
import sys

import pytest
import torch

if __name__ != '__main__':
    from conftest import run, torchrun_cmd

CUDA = torch.cuda.is_available()
CAPABILITY = torch.cuda.get_device_capability() if CUDA else (0, 0)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU (run by bench/gpu_check.sh)')]


def rel(a, b) -> float: return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def small_gpt(seed=0, **kw):
    from nanolit.model import GPT, GPTConfig, randomize_
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**dict(sequence_len=256, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=256,
                              short_window=64, window_pattern='SL'), **kw})
    return randomize_(GPT(cfg), std=0.02).cuda()


def loss_and_grads(model, idx, autocast: bool, fwd=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', torch.bfloat16, enabled=autocast):
        loss = (fwd or model)(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def batch(B=4, T=256, V=512, seed=1):
    return torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(seed)).cuda()


def test_bf16_autocast_forward_backward_matches_fp32():
    model, idx = small_gpt(), batch()
    torch.backends.cuda.matmul.allow_tf32 = False
    l32, g32 = loss_and_grads(model, idx, autocast=False)
    l16, g16 = loss_and_grads(model, idx, autocast=True)
    assert g16.keys() == g32.keys() and all(g.isfinite().all() for g in g16.values())
    assert abs(l16 - l32) < 1e-2 * l32, (l16, l32)
    worst = max(g32, key=lambda k: rel(g16[k], g32[k]))
    assert rel(g16[worst], g32[worst]) < 0.05, (worst, rel(g16[worst], g32[worst]))
    with torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
        assert model(idx[:, :-1]).dtype == torch.float32                       # logits leave the model in fp32


def test_compiled_matches_eager_on_cuda():
    model, idx = small_gpt(), batch()
    le, ge = loss_and_grads(model, idx, autocast=True)
    lc, gc = loss_and_grads(model, idx, autocast=True, fwd=torch.compile(model, dynamic=False))
    assert abs(lc - le) < 1e-2 * le, (lc, le)
    assert max(rel(gc[k], ge[k]) for k in ge) < 0.03


def test_flash_attention_3_matches_sdpa(monkeypatch):
    import nanolit.model as M
    if M._flash_attn3() is None: pytest.skip('Flash-Attention 3 is not importable here (flash_attn_interface, Hopper)')
    model, idx = small_gpt(), batch()
    lf, gf = loss_and_grads(model, idx, autocast=True)                          # FA3, sliding and full layers
    monkeypatch.setattr(M, '_flash_attn3', lambda: None)
    ls, gs = loss_and_grads(model, idx, autocast=True)                          # SDPA with the window masks
    assert abs(lf - ls) < 1e-2 * ls, (lf, ls)
    assert max(rel(gf[k], gs[k]) for k in gs) < 0.05


@pytest.mark.parametrize('recipe', ['tensorwise', 'rowwise'])
def test_fp8_scaled_mm_against_emulation_and_bf16(recipe):
    from nanolit.fp8 import Float8Linear
    need = (9, 0) if recipe == 'rowwise' else (8, 9)
    if CAPABILITY < need: pytest.skip(f'{recipe} FP8 needs compute capability {need[0]}.{need[1]}; this GPU has {CAPABILITY}')
    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 512, bias=False).cuda()
    x, g = torch.randn(512, 1024, device='cuda'), torch.randn(512, 512, device='cuda') * 1e-4
    out = {}
    for name, layer in (('kernel', Float8Linear.from_linear(lin, recipe, emulate=False)),
                        ('emulated', Float8Linear.from_linear(lin, recipe, emulate=True)), ('bf16', lin)):
        lin.weight.grad = None
        xx = x.clone().requires_grad_()
        with torch.autocast('cuda', torch.bfloat16): y = layer(xx)
        assert y.dtype == torch.bfloat16
        y.backward(g.to(y.dtype))
        out[name] = y.float(), xx.grad.float(), lin.weight.grad.float()
    for k, e, b in zip(out['kernel'], out['emulated'], out['bf16']):
        assert rel(k, e) < 1e-2, (recipe, rel(k, e))                          # the same float8 numbers, another kernel
        assert rel(k, b) < 0.08, (recipe, rel(k, b))                          # the chapter's tolerance against bf16


def test_fp8_model_compiles_and_trains():
    from nanolit.fp8 import disable_fp8, enable_fp8
    if CAPABILITY < (8, 9): pytest.skip('FP8 needs compute capability 8.9')
    import nanolit.optim  # noqa: F401
    model, idx = small_gpt(), batch()
    ref, _ = loss_and_grads(small_gpt(), idx, autocast=True)
    assert enable_fp8(model, 'cuda', fp8=True) == 12
    opt = model.setup_optimizer()
    fwd = torch.compile(model, dynamic=False)
    l0, _ = loss_and_grads(model, idx, autocast=True, fwd=fwd)
    assert abs(l0 - ref) < 0.03 * ref, (l0, ref)
    for _ in range(5):
        loss, _ = loss_and_grads(model, idx, autocast=True, fwd=fwd); opt.step()
    assert loss < l0
    with disable_fp8(model), torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
        assert model(idx[:, :-1], idx[:, 1:]).isfinite()


@pytest.mark.parametrize('nproc', [1, 2])
def test_nccl_collectives_optimizer_and_eval(nproc):
    res = run(torchrun_cmd(nproc, __file__), timeout=300)
    out = res.stdout + res.stderr
    if nproc > torch.cuda.device_count() and res.returncode != 0 and 'Duplicate GPU' in out:
        pytest.skip(f'NCCL refuses {nproc} ranks on {torch.cuda.device_count()} GPU(s) ("Duplicate GPU detected"); '
                    'the 1-rank run checks every collective on NCCL')
    assert res.returncode == 0, out[-4000:]
    assert out.count('nccl ok') == nproc, out[-2000:]


def _nccl_worker():
    "Every rank: each collective helper on CUDA tensors, the optimizer's collectives, evaluate_bpb's and nanolit_eval's."
    import torch.distributed as dist
    import nanolit.optim  # noqa: F401  (GPT.setup_optimizer)
    from nanolit.common import (all_gather, all_gather_into_tensor, all_reduce, barrier, broadcast, collective_device,
                                compute_cleanup, record_collective_device, reduce_scatter_tensor)
    from nanolit.eval import evaluate_task
    from nanolit.tasks import SpellingBee
    from nanolit.train import evaluate_bpb
    r, W, local = int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), int(os.environ['LOCAL_RANK'])
    device = torch.device('cuda', local % torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group('nccl', device_id=device)
    record_collective_device(device)
    assert collective_device() == device
    t = lambda v: torch.tensor(v, dtype=torch.float32, device=device)
    assert all_reduce(t([r + 1.0])).item() == W * (W + 1) / 2
    assert all_reduce(t([float(r)]), 'max').item() == W - 1
    assert broadcast(t([7.0 if r == 0 else -1.0])).item() == 7.0
    assert all_gather_into_tensor(torch.empty(2 * W, device=device), torch.full((2,), float(r), device=device)).tolist() \
        == [float(i) for i in range(W) for _ in range(2)]
    assert [p.tolist() for p in all_gather([torch.empty(3, device=device) for _ in range(W)], torch.full((3,), float(r), device=device))] \
        == [[float(i)] * 3 for i in range(W)]
    handle = reduce_scatter_tensor(out := torch.empty(2, device=device), torch.arange(2.0 * W, device=device), async_op=True)
    handle.wait()
    assert out.tolist() == [W * 2.0 * r, W * (2.0 * r + 1)]
    try: all_reduce(torch.ones(1)); raise AssertionError('a CPU tensor reached NCCL')
    except RuntimeError as e: assert 'NCCL takes only tensors' in str(e), e
    bee = SpellingBee(20, 'test')                                                # nanolit_eval's sum of counts
    res = evaluate_task(bee, lambda c: f"#### {c['answer']}" if int(c['answer']) % 2 else 'no', rank=r, world_size=W)
    assert (res['problems'], res['correct']) == (20, sum(int(bee[i]['answer']) % 2 for i in range(20))), res
    model = small_gpt()                                                          # same init on every rank
    opt = model.setup_optimizer(shard_min_numel=256)                             # small threshold: shard everything
    for step in range(3):
        idx = batch(B=2, seed=100 * step + r)                                    # each rank its own rows
        loss, _ = loss_and_grads(model, idx, autocast=True)
        opt.step()
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    copies = all_gather([torch.empty_like(flat) for _ in range(W)], flat)
    assert all(torch.equal(c, copies[0]) for c in copies), 'ranks disagree on the parameters after the optimizer steps'
    with torch.autocast('cuda', torch.bfloat16):
        bpb = evaluate_bpb(model, lambda: (batch(B=2, seed=7 + r)[:, :-1], batch(B=2, seed=7 + r)[:, 1:]), 2,
                           torch.ones(512, dtype=torch.long, device=device))
    assert all_reduce(t([bpb]), 'max').item() == all_reduce(t([bpb]), 'min').item()   # one number on every rank
    barrier()
    print(f"rank {r}: nccl ok (world {W} on {device}; loss {loss.item():.3f}, bpb {bpb:.3f})", flush=True)
    compute_cleanup()


if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _nccl_worker()
