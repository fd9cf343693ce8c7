"""Training-step speed of a fixed small GPT on the CPU, eager and torch.compile'd, as CPU MFU.

    python bench/model_speed.py [--steps 10] [--no-compile] [--no-profile]

CPU MFU = model FLOP/s (GPT.estimate_flops() x tokens/s) / FLOP/s of a 2048x2048 fp32 torch.mm, both measured in
this run, on this machine, with the same threads. The sgemm is timed in three blocks of 7 (before the eager model,
between eager and compiled, after compiled) and its rate is the median of all 21 timings: on a shared machine one
block alone moved by 1.5x between runs. The step is forward + backward + AdamW update (torch's fused CPU kernel).
Like every nanolit stage (`compute_init`), the script first tunes the CPU allocator: huge pages, and freed memory
kept for reuse (chapter 00; `THP_MEM_ALLOC_ENABLE=0` or `MALLOC_MMAP_MAX_=65536` in the environment turn either half
off, to measure without). Before timing, the compiled model's first loss is checked against the eager model's.
Then a profile of the compiled step says where the time goes: matmuls (and the rate they ran at, against the
sgemm baseline), attention, the compiler's fused elementwise kernels, the optimizer, the rest.
Last line (the headline): the compiled step's tokens/s and its ratio to the sgemm roofline.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

from nanolit.common import tune_cpu_allocator
from nanolit.model import GPT, config_from_depth

def sgemm_times(n: int = 2048, reps: int = 7) -> list[float]:
    "Seconds per 2048x2048 fp32 matmul, `reps` timings after two warm-up calls."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2): a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
    return times

def make_step(model, fwd, x, y):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    def step():
        loss = fwd(x, y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return step

def tokens_per_s(step, tokens, steps, warmup):
    for _ in range(warmup): step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return tokens / statistics.median(times)

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
                'optimizer' if 'adam' in n.lower() or 'zero_grad' in n else 'other')
        kinds[kind] += e.self_cpu_time_total / 1e6 / steps
    return dict(kinds)

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--depth', type=int, default=4)
    p.add_argument('--seq-len', type=int, default=256)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--vocab', type=int, default=32768)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--no-profile', action='store_true')
    args = p.parse_args()
    alloc = tune_cpu_allocator()   # as compute_init does in every stage; before the first tensor
    torch.manual_seed(0)
    cfg = config_from_depth(args.depth, args.vocab, sequence_len=args.seq_len)
    model = GPT(cfg)
    fpt, tokens = model.estimate_flops(), args.batch * args.seq_len
    n = model.num_scaling_params()
    matmul_fpt = 6 * (n['transformer_matrices'] + n['lm_head'])   # estimate_flops() less its attention term
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len)); y = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    rate = lambda times: 2 * 2048 ** 3 / statistics.median(times)
    blocks = [sgemm_times()]
    print(f"config: {cfg}")
    eager = tokens_per_s(make_step(model, model, x, y), tokens, args.steps, warmup=2)
    blocks.append(sgemm_times())
    if not args.no_compile:
        t0 = time.perf_counter()
        model = GPT(cfg)
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        loss_c, loss_e = compiled(x, y).item(), model(x, y).item()
        assert abs(loss_c - loss_e) < 1e-4 * abs(loss_e), f"compiled loss {loss_c} differs from eager {loss_e}"
        step = make_step(model, compiled, x, y)
        comp = tokens_per_s(step, tokens, args.steps, warmup=3)
        compile_s = time.perf_counter() - t0
        blocks.append(sgemm_times())
    peak = rate([t for b in blocks for t in b])
    print(f"threads {torch.get_num_threads()}; allocator {alloc}")
    print(f"sgemm 2048^3: {peak / 1e9:.1f} GFLOP/s, the median of {len(blocks)} blocks "
          f"({', '.join(f'{rate(b) / 1e9:.0f}' for b in blocks)}); model {fpt / 1e6:.1f} MFLOP/token "
          f"(roofline at sgemm speed: {peak / fpt:,.0f} tok/s)")
    print(f"eager:    {eager:8,.0f} tok/s  MFU vs sgemm {eager * fpt / peak:.2f}")
    if args.no_compile:
        print(f"eager train step: {eager:,.0f} tok/s ({eager * fpt / peak:.2f}x vs sgemm roofline)")
        return
    print(f"compiled: {comp:8,.0f} tok/s  MFU vs sgemm {comp * fpt / peak:.2f}  (compile + warmup + timing "
          f"{compile_s:.0f} s; first loss {loss_c:.5f}, eager {loss_e:.5f})")
    if not args.no_profile:
        kinds = where_time_goes(step)
        total = sum(kinds.values())
        print(f"compiled step, profiled: {total * 1e3:.0f} ms")
        for kind, s in sorted(kinds.items(), key=lambda kv: -kv[1]):
            extra = ''
            if kind == 'matmul':
                mm_rate = matmul_fpt * tokens / s
                extra = (f"  {mm_rate / 1e9:.0f} GFLOP/s = {mm_rate / peak:.2f}x sgemm: with nothing else in the step, "
                         f"MFU would be {(fpt * tokens / s) / peak:.2f}")
            print(f"  {kind:17s} {s * 1e3:6.0f} ms  {s / total:4.0%}{extra}")
    print(f"compiled train step: {comp:,.0f} tok/s ({comp * fpt / peak:.2f}x vs sgemm roofline; eager {eager * fpt / peak:.2f}x)")

if __name__ == '__main__':
    main()
