"""Stress check (not part of the default suite): N consecutive 2-process torchrun runs must all exit 0.

    python tests/stress_torchrun.py 50            # compute_init + collectives + compute_cleanup (a few seconds each)
    python tests/stress_torchrun.py 50 --stage    # a tiny nanolit_base_train run, checkpoint and all (~10 s each)

Guards against hangs and aborts at exit (gloo on CPU was reported to die with SIGABRT during teardown about one run
in seven on torch 2.13).
"""
import argparse
import sys
import tempfile
import time
from collections import Counter

from conftest import WORKERS, run, torchrun_cmd

TINY = ['--depth', '2', '--aspect-ratio', '32', '--head-dim', '32', '--max-seq-len', '64', '--device-batch-size', '2',
        '--total-batch-size', '256', '--num-iterations', '3', '--eval-every', '-1', '--eval-tokens', '256',
        '--target-param-data-ratio', '-1']

def main() -> int:
    import torch
    ap = argparse.ArgumentParser(); ap.add_argument('n', type=int, nargs='?', default=50)
    ap.add_argument('--stage', action='store_true', help='run a tiny 2-process nanolit_base_train instead')
    args = ap.parse_args()
    env = {}
    if args.stage:
        env['NANOLIT_BASE_DIR'] = tempfile.mkdtemp()
        res = run([sys.executable, '-m', 'nanolit.tokenizer', '--vocab-size', '300', '--max-chars', '200000'], env)
        assert res.returncode == 0, res.stderr
    codes, t0 = Counter(), time.time()
    for i in range(args.n):
        cmd = torchrun_cmd(2, ['-m', 'nanolit.base_train'], *TINY, '--model-tag', f's{i}') if args.stage else \
              torchrun_cmd(2, WORKERS / 'common_ddp.py')
        try: res = run(cmd, env, timeout=180); code = res.returncode
        except Exception as e: code, res = f'timeout ({type(e).__name__})', None
        codes[code] += 1
        if code != 0: print(f'run {i + 1}: exit {code}\n{(res.stdout + res.stderr)[-2000:] if res else ""}', flush=True)
    ok = codes.get(0, 0)
    what = '2-process nanolit_base_train' if args.stage else '2-process torchrun'
    print(f'torch {torch.__version__}: {ok}/{args.n} {what} runs exited 0 in {time.time() - t0:.0f} s; exit codes {dict(codes)}')
    return 0 if ok == args.n else 1

if __name__ == '__main__':
    sys.exit(main())
