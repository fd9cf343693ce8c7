"""Stress check (not part of the default suite): N consecutive 2-process torchrun runs must all exit 0.

    python tests/stress_torchrun.py 50

Guards against hangs and aborts at exit (gloo on CPU used to die with SIGABRT during teardown about one run in seven).
"""
import sys
import time
from collections import Counter

from conftest import WORKERS, run, torchrun_cmd

def main(n: int = 50, nproc: int = 2) -> int:
    import torch
    codes, t0 = Counter(), time.time()
    for i in range(n):
        try: res = run(torchrun_cmd(nproc, WORKERS / 'common_ddp.py'), timeout=120); code = res.returncode
        except Exception as e: code, res = f'timeout ({type(e).__name__})', None
        codes[code] += 1
        if code != 0: print(f'run {i + 1}: exit {code}\n{(res.stdout + res.stderr)[-2000:] if res else ""}', flush=True)
    ok = codes.get(0, 0)
    print(f'torch {torch.__version__}: {ok}/{n} {nproc}-process torchrun runs exited 0 in {time.time() - t0:.0f} s; exit codes {dict(codes)}')
    return 0 if ok == n else 1

if __name__ == '__main__':
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
