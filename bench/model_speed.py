"""Training-step speed of a fixed small GPT on the CPU, eager and torch.compile'd, as CPU MFU.

    python bench/model_speed.py [--steps 10] [--no-compile] [--no-profile] [--adamw] [--no-sparse]

Two models of the same depth and widths are timed, each in its own process (so that the peak resident memory of each
is its own): nanolit's default, which is nanochat@92d63d4's architecture (smear, backout, q/k x1.2, value embeddings
with their narrow gate, RoPE base 1e5, nanochat's short window), and the model before it ("previous": those features
off, the 12-channel gate and a short window of T/4), so the cost of the features is measured in one run.

CPU MFU = model FLOP/s (GPT.estimate_flops() x tokens/s) / FLOP/s of a 2048x2048 fp32 torch.mm, both measured in
this run, on this machine, with the same threads. The sgemm is timed in blocks of 7, one before the first model's
process and one after each (5 blocks with the sparse models, 3 without), and its rate is the median of all the
timings: on a shared machine one block alone moved by 1.5x between runs. The step is forward + backward + the update of the optimizer `setup_optimizer` builds (MuonAdamW:
Muon for the matrices, AdamW for the rest); `--adamw` adds a line with torch's fused AdamW over every parameter.
Like every nanolit stage (`compute_init`), the script first tunes the CPU allocator: huge pages, and freed memory
kept for reuse (chapter 00; `THP_MEM_ALLOC_ENABLE=0` or `MALLOC_MMAP_MAX_=65536` in the environment turn either half
off, to measure without). Before timing, the compiled model's first loss is checked against the eager model's.
Then a profile of the compiled step says where the time goes: matmuls (and the rate they ran at, against the
sgemm baseline), attention, the compiler's fused elementwise kernels, the optimizer, the rest.
Memory, two ways. The model's own: the most tensor memory one warm training step holds at once beyond the parameters
and the optimizer state (which the two models share to a few KB), i.e. activations kept for backward, gradients and
temporaries, summed from the profiler's allocation events, eager and compiled; it is exact and the same in every run.
The process's: its peak resident size, which also holds the interpreter, the compiler's own memory and the freed pages
the tuned allocator keeps; it moved by up to ±10% between runs of the same model (1,635-1,956 MiB), far more than any
difference between the two models, so it is printed for scale, not to compare them.
Sparse capacity (chapters 3a and 3b; `--no-sparse` skips it): two more models, each against the default model, which
is the dense model of their active FLOPs per token, eager steps all three (the float32 CPU expert loop breaks a
compiled graph, so a compiled MoE step would time the breaks; a GPU, where the grouped kernel runs, is where to time
it compiled). "l3" has one block fewer and an L3 layer after the middle block: two tables of 2 x vocabulary rows, an
allocation as skewed as a real one (token i's score 1/(i+1): the frequent ones own k_max = 32 rows, so the lookup
pads to 32), and the up-projection as wide as makes its FLOPs per token the default model's. "moe" has every MLP
replaced by 8 experts, 2 per token, each half the dense MLP's width (the same active FLOPs, plus the router's), its
balancing bias updated every step as the training loop does. For each: tokens/s, active FLOP/s
(estimate_flops x tokens/s) as a fraction of the same sgemm rate, and the ratio of its tokens/s to the default
model's eager tokens/s: at equal FLOPs per token, the price of the sparse work (gathers, routing, the expert loop).
Last line (the headline): the default model's compiled step in tokens/s and its ratio to the previous model's; it
stays the headline because it is the step every run takes, while the sparse lines measure options.
"""
import argparse
import dataclasses
import math
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import torch

from nanolit.common import tune_cpu_allocator
import nanolit.optim  # noqa: F401  (adds GPT.setup_optimizer)
from nanolit.l3 import allocate_rows
from nanolit.model import GPT, config_from_depth
from nanolit.moe import update_moe_balancing

PREVIOUS = dict(smear=False, backout=False, qk_scale=1.0, rope_base=10_000.0, ve_gate_range=2.0)   # + gate on all channels, window T/4

def sgemm_times(n: int = 2048, reps: int = 7) -> list[float]:
    "Seconds per 2048x2048 fp32 matmul, `reps` timings after two warm-up calls."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2): a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
    return times

def make_step(model, fwd, x, y, adamw=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if adamw else model.setup_optimizer()
    has_moe = bool(model.config.moe_layers)
    def step():
        loss = fwd(x, y); loss.backward()
        if has_moe: update_moe_balancing(model, model.config.moe_bias_update_rate)   # as the training loop does
        opt.step(); opt.zero_grad(set_to_none=True)
    return step

L3_K_MAX = 32

def sparse_config(cfg, variant: str):
    "The config of the 'l3' or 'moe' model whose active FLOPs per token are those of the default model `cfg`."
    if variant == 'moe': return dataclasses.replace(cfg, moe_layers='all', moe_num_experts=8, moe_top_k=2)
    with torch.device('meta'):
        target = GPT(cfg).estimate_flops()
        fewer = GPT(dataclasses.replace(cfg, n_layer=cfg.n_layer - 1)).estimate_flops()
    C = cfg.n_embd   # L3 FLOPs per token: 6·(C·d_up + (C + d_up)·C) dense + 12·k·C for the padded lookup
    d_up = max(64, round((target - fewer - 12 * L3_K_MAX * C - 6 * C * C) / (12 * C) / 64) * 64)
    return dataclasses.replace(cfg, n_layer=cfg.n_layer - 1, l3_after_layers=str((cfg.n_layer - 2) // 2),
                               l3_n_emb=2 * cfg.vocab_size, l3_k_max=L3_K_MAX, l3_d_up=d_up)

def measure_sparse(args, variant: str) -> dict:
    "Run in a child process: tokens/s of the eager step of the 'l3' or 'moe' model."
    tune_cpu_allocator()
    torch.manual_seed(0)
    cfg = sparse_config(config_from_depth(args.depth, args.vocab, sequence_len=args.seq_len), variant)
    model = GPT(cfg)
    if variant == 'l3':   # token i scores 1/(i+1): the frequent ones own k_max rows, as after a real allocation
        rows = torch.from_numpy(allocate_rows((1 / torch.arange(1, args.vocab + 1, dtype=torch.float64)).numpy(), cfg.l3_n_emb, L3_K_MAX))
        for l3 in model.l3.values(): l3.set_allocation(rows)
    n = model.num_scaling_params()
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len)); y = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    what = (f"L3 ({cfg.n_layer} blocks, an L3 layer after block {cfg.l3_after_layers}: 2 tables of {cfg.l3_n_emb:,} rows, "
            f"k_max {L3_K_MAX}, d_up {cfg.l3_d_up:,})" if variant == 'l3' else
            f"MoE ({cfg.moe_num_experts} experts of width {cfg.moe_hidden}, {cfg.moe_top_k} a token, in every layer)")
    extra = f"{n['l3_tables'] / 1e6:.1f} M in the L3 tables" if variant == 'l3' else f"{n['active'] / 1e6:.1f} M active"
    return dict(what=what, fpt=model.estimate_flops(), params=n['total'], extra=extra,
                eager=tokens_per_s(make_step(model, model, x, y), args.batch * args.seq_len, args.steps, warmup=2))

def tokens_per_s(step, tokens, steps, warmup):
    for _ in range(warmup): step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return tokens / statistics.median(times)

def step_peak_mib(step) -> float:
    "MiB: the most tensor memory `step()` holds at once beyond what was live before it (the profiler's allocations)."
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: step()
    with tempfile.NamedTemporaryFile(suffix='.json') as f:
        prof.export_chrome_trace(f.name); events = json.load(open(f.name))['traceEvents']
    live = peak = 0   # a free of a tensor older than the profile is not reported, so `live` starts at 0
    for e in sorted((e for e in events if e.get('name') == '[memory]'), key=lambda e: e['ts']):
        live += e['args']['Bytes']; peak = max(peak, live)
    return peak / 2 ** 20

def where_time_goes(step, steps=2):
    "Self time per step by kind of work, from the profiler."
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof: [step() for _ in range(steps)]
    kinds = defaultdict(float)
    for e in prof.key_averages():
        n = e.key
        kind = ('matmul' if n in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm') else
                'attention' if 'scaled_dot_product' in n else
                'compiled kernels' if n.startswith('## Call CompiledFxGraph') else
                'optimizer' if any(w in n.lower() for w in ('adam', 'muon', 'zero_grad', 'optimizer')) else 'other')
        kinds[kind] += e.self_cpu_time_total / 1e6 / steps
    return dict(kinds)

def measure(args, variant: str) -> dict:
    "Run in a child process: tokens/s of one model's step, eager and compiled, its peak resident memory and a profile."
    alloc = tune_cpu_allocator()   # as compute_init does in every stage; before the first tensor
    torch.manual_seed(0)
    extra = dict(PREVIOUS, short_window=args.seq_len // 4) if variant == 'previous' else {}
    if variant == 'previous': extra['ve_gate_channels'] = math.ceil(args.depth * 64 / 128) * 128   # n_embd: the old gate read every channel
    cfg = config_from_depth(args.depth, args.vocab, sequence_len=args.seq_len, **extra)
    model = GPT(cfg)
    n = model.num_scaling_params()
    out = dict(config=str(cfg), alloc=str(alloc), fpt=model.estimate_flops(), params=n['total'], matmul_fpt=6 * (n['transformer_matrices'] + n['lm_head']))
    tokens = args.batch * args.seq_len
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len)); y = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    out['eager'] = tokens_per_s(make_step(model, model, x, y), tokens, args.steps, warmup=2)
    if args.adamw: out['eager_adamw'] = tokens_per_s(make_step(model, model, x, y, adamw=True), tokens, args.steps, warmup=2)
    if not args.no_compile:
        t0 = time.perf_counter()
        model = GPT(cfg)
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        loss_c, loss_e = compiled(x, y).item(), model(x, y).item()
        assert abs(loss_c - loss_e) < 1e-4 * abs(loss_e), f"compiled loss {loss_c} differs from eager {loss_e}"
        step = make_step(model, compiled, x, y)
        out['compiled'] = tokens_per_s(step, tokens, args.steps, warmup=3)
        out.update(compile_s=time.perf_counter() - t0, loss_c=loss_c, loss_e=loss_e)
        if args.adamw: out['compiled_adamw'] = tokens_per_s(make_step(model, compiled, x, y, adamw=True), tokens, args.steps, warmup=2)
    out['peak_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # before the profiler's own memory
    eager_model = GPT(cfg); eager_step = make_step(eager_model, eager_model, x, y)
    for _ in range(2): eager_step()   # warm: the optimizer's state exists, as in the timed steps
    out['step_mib'] = {'eager': step_peak_mib(eager_step)}
    del eager_step, eager_model
    if not args.no_compile: out['step_mib']['compiled'] = step_peak_mib(step)
    if not args.no_compile and not args.no_profile and variant == 'default': out['profile'] = where_time_goes(step)
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--depth', type=int, default=4)
    p.add_argument('--seq-len', type=int, default=256)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--vocab', type=int, default=32768)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--no-profile', action='store_true')
    p.add_argument('--adamw', action='store_true', help="also time torch's fused AdamW over every parameter")
    p.add_argument('--no-sparse', action='store_true', help='skip the L3 and MoE models')
    p.add_argument('--variant', choices=['default', 'previous', 'l3', 'moe'], help=argparse.SUPPRESS)   # the child's job
    args = p.parse_args()
    if args.variant:
        print(json.dumps(measure_sparse(args, args.variant) if args.variant in ('l3', 'moe') else measure(args, args.variant)))
        return
    tune_cpu_allocator()
    rate = lambda times: 2 * 2048 ** 3 / statistics.median(times)
    blocks, res = [sgemm_times()], {}
    for variant in ('previous', 'default') + (() if args.no_sparse else ('l3', 'moe')):   # each in its own process: its own peak memory, its own compile cache
        cmd = [sys.executable, __file__, *sys.argv[1:], '--variant', variant]
        res[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        blocks.append(sgemm_times())
    peak = rate([t for b in blocks for t in b])
    new, old = res['default'], res['previous']
    fpt, tokens = new['fpt'], args.batch * args.seq_len
    print(f"default (nanochat@92d63d4): {new['config']}")
    print("previous: smear, backout, q/k scale off; RoPE base 1e4; VE gate over all channels, range 2; short window T/4")
    print(f"threads {torch.get_num_threads()}; allocator {new['alloc']}; optimizer: MuonAdamW from setup_optimizer")
    print(f"sgemm 2048^3: {peak / 1e9:.1f} GFLOP/s, the median of {len(blocks)} blocks "
          f"({', '.join(f'{rate(b) / 1e9:.0f}' for b in blocks)}); model {fpt / 1e6:.1f} MFLOP/token "
          f"(roofline at sgemm speed: {peak / fpt:,.0f} tok/s)")
    modes = ['eager'] + ([] if args.no_compile else ['compiled']) + (['eager_adamw'] + ([] if args.no_compile else ['compiled_adamw']) if args.adamw else [])
    for mode in modes:
        print(f"{mode:15s} default {new[mode]:8,.0f} tok/s (MFU vs sgemm {new[mode] * fpt / peak:.2f})   previous "
              f"{old[mode]:8,.0f} tok/s   ratio {new[mode] / old[mode]:.3f}")
    print("peak tensor memory of a warm training step (activations, gradients, temporaries): " + "; ".join(
        f"{mode} default {new['step_mib'][mode]:,.1f} MiB, previous {old['step_mib'][mode]:,.1f} MiB "
        f"(ratio {new['step_mib'][mode] / old['step_mib'][mode]:.3f})" for mode in new['step_mib']))
    print(f"peak resident memory of each process (for scale: ±10% run to run): default {new['peak_mib']:,.0f} MiB, "
          f"previous {old['peak_mib']:,.0f} MiB (ratio {new['peak_mib'] / old['peak_mib']:.3f})")
    for variant in () if args.no_sparse else ('l3', 'moe'):
        r = res[variant]
        print(f"{variant}: {r['what']}: {r['fpt'] / 1e6:.2f} MFLOP/token (default {fpt / 1e6:.2f}); "
              f"{r['params'] / 1e6:.1f} M parameters, {r['extra']} (default {new['params'] / 1e6:.1f} M)")
        print(f"{variant} eager train step: {r['eager']:,.0f} tok/s, active FLOP/s {r['eager'] * r['fpt'] / peak:.2f} of sgemm "
              f"({r['eager'] / new['eager']:.2f}x vs default, the dense model of its FLOPs: {new['eager'] * fpt / peak:.2f} of sgemm)")
    if args.no_compile:
        print(f"eager train step: {new['eager']:,.0f} tok/s ({new['eager'] / old['eager']:.2f}x vs previous model)")
        return
    print(f"compile + warmup + timing {new['compile_s']:.0f} s; first loss {new['loss_c']:.5f}, eager {new['loss_e']:.5f}")
    if 'profile' in new:
        kinds = new['profile']; total = sum(kinds.values())
        print(f"default compiled step, profiled: {total * 1e3:.0f} ms")
        for kind, s in sorted(kinds.items(), key=lambda kv: -kv[1]):
            extra = ''
            if kind == 'matmul':
                mm_rate = new['matmul_fpt'] * tokens / s
                extra = (f"  {mm_rate / 1e9:.0f} GFLOP/s = {mm_rate / peak:.2f}x sgemm: with nothing else in the step, "
                         f"MFU would be {(fpt * tokens / s) / peak:.2f}")
            print(f"  {kind:17s} {s * 1e3:6.0f} ms  {s / total:4.0%}{extra}")
    print(f"compiled train step: {new['compiled']:,.0f} tok/s ({new['compiled'] / old['compiled']:.2f}x vs previous model)")

if __name__ == '__main__':
    main()
