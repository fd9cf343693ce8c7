"""compute_init / compute_cleanup under a real 2-process torchrun on the CPU."""
from conftest import WORKERS, run, torchrun_cmd

def test_torchrun_two_processes_collectives_and_clean_exit():
    res = run(torchrun_cmd(2, WORKERS / 'common_ddp.py'), timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert 'rank 0/2 local 0: all_reduce=3 broadcast=123' in out, out
    assert 'rank 1/2 local 1: all_reduce=3 broadcast=123' in out, out
    assert out.count('ddp ok') == 1, out       # print0: rank 0 only
    assert 'terminate called' not in out, out


def test_failure_is_not_hidden_by_the_exit_hook():
    "A rank that fails before compute_cleanup must make the run fail: the exit hook only shortens clean exits."
    res = run(torchrun_cmd(2, WORKERS / 'common_ddp.py'), env_extra={'NANOLIT_FAIL_RANK': '1'}, timeout=180)
    assert res.returncode != 0, res.stdout + res.stderr
    assert 'failing on purpose on rank 1' in res.stdout + res.stderr
