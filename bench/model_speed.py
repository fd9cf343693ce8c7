"""Training-step speed of a fixed small GPT on the CPU, eager and torch.compile'd, as CPU MFU.

    python bench/model_speed.py [--steps 10] [--no-compile] [--profile]

CPU MFU = model FLOP/s (GPT.estimate_flops() x tokens/s) / FLOP/s of a 2048x2048 fp32 torch.mm (median of several),
both measured in this run, on this machine, with the same threads. The step is forward + backward + AdamW update.
Last line (the headline): the compiled step's tokens/s and its ratio to the sgemm roofline.
"""
import argparse
import statistics
import time

import torch

from nanolit.model import GPT, config_from_depth

def sgemm_flops(n: int = 2048, reps: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2): a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)

def step_speed(model, batch, T, vocab, steps, warmup):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, T)); y = torch.randint(0, vocab, (batch, T))
    def step():
        loss = model(x, y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(warmup): step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return batch * T / statistics.median(times)

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--depth', type=int, default=4)
    p.add_argument('--seq-len', type=int, default=256)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--vocab', type=int, default=32768)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--profile', action='store_true', help='print where the eager step spends its time')
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = config_from_depth(args.depth, args.vocab, sequence_len=args.seq_len)
    model = GPT(cfg)
    fpt = model.estimate_flops()
    peak = sgemm_flops()
    print(f"config: {cfg}")
    print(f"threads {torch.get_num_threads()}, sgemm 2048^3: {peak / 1e9:.1f} GFLOP/s; model {fpt / 1e6:.1f} MFLOP/token "
          f"(roofline at sgemm speed: {peak / fpt:,.0f} tok/s)")
    eager = step_speed(model, args.batch, args.seq_len, args.vocab, args.steps, warmup=2)
    print(f"eager:    {eager:8,.0f} tok/s  MFU vs sgemm {eager * fpt / peak:.2f}")
    if args.profile:
        from torch.profiler import profile, ProfilerActivity
        x = torch.randint(0, args.vocab, (args.batch, args.seq_len))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x, x).backward()
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))
    if args.no_compile:
        print(f"eager train step: {eager:,.0f} tok/s ({eager * fpt / peak:.2f}x vs sgemm roofline)")
        return
    t0 = time.perf_counter()
    compiled = torch.compile(GPT(cfg))
    comp = step_speed(compiled, args.batch, args.seq_len, args.vocab, args.steps, warmup=3)
    print(f"compiled: {comp:8,.0f} tok/s  MFU vs sgemm {comp * fpt / peak:.2f}  (compile + warmup {time.perf_counter() - t0:.0f} s)")
    print(f"compiled train step: {comp:,.0f} tok/s ({comp * fpt / peak:.2f}x vs sgemm roofline; eager {eager * fpt / peak:.2f}x)")

if __name__ == '__main__':
    main()
