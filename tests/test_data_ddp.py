"""The loader's lanes under a real 3-process torchrun on the CPU (gloo): each rank packs its own lanes, the rows are one process's."""
import json
import re

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

BAD_ROW_WORKER = '''
import json, sys
from pathlib import Path
from nanolit.common import compute_cleanup, compute_init
from nanolit.data import BadRowPolicy, BestFitPacker, DataLoader
from nanolit.data import TaskStream
from nanolit.tasks import CustomJSON
from nanolit.tokenizer import Tokenizer
info = compute_init('cpu')
bad = Path(sys.argv[1])
tok = Tokenizer.train([bad.read_text()] * 50, vocab_size=300)
task = CustomJSON(path=bad)
def loader(policy, prefetch):   # lane v takes rows v, v+2, ...: only lane 1, packed by rank 1, meets the bad row 1
    streams = [TaskStream(task, tok, 128, 'assistant', lane=v, lanes=2, bad_rows=policy) for v in range(2)]
    return DataLoader([BestFitPacker(s, 127, 'pad', 2) for s in streams], 1, info.rank, info.world_size, prefetch=prefetch)
for prefetch in (0, 2):
    ld = loader(None, prefetch)
    try:
        for _ in range(4): ld.next_microbatch()
        print(f"rank {info.rank} prefetch {prefetch}: no error", flush=True)
    except ValueError as e:
        print(f"rank {info.rank} prefetch {prefetch} raised: {e}", flush=True)
    ld.close()
ld = loader(BadRowPolicy(skip=True, max_fraction=0.5), 0)
for _ in range(4): ld.next_microbatch()
print(f"rank {info.rank} skipped: {json.dumps(ld.bad_rows, sort_keys=True)}", flush=True)
compute_cleanup()
'''

def test_a_bad_row_on_one_rank_stops_every_rank_with_the_same_line(tmp_path):
    "Rank 1 meets the bad row; rank 0, waiting in the exchange, must not hang: both raise rank 1's line. Skipped: both count."
    worker = tmp_path / 'bad_row_worker.py'; worker.write_text(BAD_ROW_WORKER)
    good = {'messages': [{'role': 'user', 'content': 'A question?'}, {'role': 'assistant', 'content': 'An answer.'}]}
    bad = tmp_path / 'chat.jsonl'
    bad.write_text(''.join(json.dumps(r) + '\n' for r in [good, {'messages': []}] + [good] * 10))
    res = run(torchrun_cmd(2, worker, bad), timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for prefetch in (0, 2):
        found = re.findall(rf"rank (\d) prefetch {prefetch} raised: (.*?; fix or remove the row)", out)   # lines may interleave
        lines = [line for _, line in found]
        assert sorted(r for r, _ in found) == ['0', '1'] and lines[0] == lines[1], out
        assert lines[0].startswith(f"{bad} line 2: the 'messages' list is empty; fix or remove the row"), lines[0]
    counts = re.findall(r"rank \d skipped: (\{[^}]*\})", out)
    assert len(counts) == 2 and counts[0] == counts[1] and '"no_messages": ' in counts[0], out
