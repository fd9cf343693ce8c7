"""The loader's lanes under a real 3-process torchrun on the CPU (gloo): each rank packs its own lanes, the rows are one process's."""
from conftest import WORKERS, run, torchrun_cmd

def test_three_ranks_pack_their_own_lanes_and_get_one_process_rows():
    res = run(torchrun_cmd(3, WORKERS / 'data_ddp.py'), timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rank in range(3):
        for name in ('crop', 'pad'):
            for prefetch in (0, 2):
                assert f"rank {rank}: {name} prefetch {prefetch}: rows identical" in out, out
    assert out.count('data ddp ok') == 1, out
