"""Run under torchrun: each rank packs only its own lanes (lane v on rank v mod W) and the rows are exchanged; every
rank's rows are bitwise those one process makes alone (packing every lane), with and without the prefetch thread, for
pretraining documents (crop) and a conversation mixture with replay (pad), and after a resume; the ranks agree on the
progress and the state."""
import json
import time

import torch
import torch.distributed as dist

from nanolit.common import compute_cleanup, compute_init, print0
from nanolit.corpus import iter_texts, prepare_embedded_corpus
from nanolit.data import BestFitPacker, DataLoader, DocumentStream
from nanolit.tasks import mixture_spec, mixture_streams
from nanolit.tokenizer import Tokenizer

info = compute_init('cpu')
W, rank, b, T, N, S = info.world_size, info.rank, 2, 128, 12, 8
data_dir = prepare_embedded_corpus()
tok = Tokenizer.train(iter_texts(data_dir, 'train'), vocab_size=1024, max_chars=300_000)

def crop():
    return [BestFitPacker(DocumentStream(data_dir, 'train', tok, max_len=T + 1, batch_docs=8, lane=v, lanes=S), T, 'crop', 40)
            for v in range(S)]

def pad():
    replay = lambda v, S: DocumentStream(data_dir, 'train', tok, max_len=T + 1, batch_docs=4, lane=v, lanes=S)
    streams = mixture_streams(mixture_spec('default', 'train', scale=0.01), tok, T + 1, 'assistant', replay, 0.3, lanes=S)
    return [BestFitPacker(s, T, 'pad', 30) for s in streams]

for name, make in (('crop', crop), ('pad', pad)):
    ref = DataLoader(make(), b * W)                       # one process, every lane: the whole global batch, sliced
    want = [tuple(t[rank * b:(rank + 1) * b] for t in ref.next_microbatch()) for _ in range(2 * N)]
    for prefetch in (0, 2):
        packers = make()
        ld = DataLoader(packers, b, rank, W, prefetch=prefetch)
        assert ld.distributed and ld.owned == [v for v in range(S) if v % W == rank]
        got = []
        for k in range(N):
            got.append(ld.next_microbatch())
            t = torch.ones(1); dist.all_reduce(t)         # the training loop's own collectives, interleaved
            if k % 3 == rank: time.sleep(0.05)            # ranks out of step
        progress = torch.tensor([ld.progress, ld.stats.tokens], dtype=torch.float64); top = progress.clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        assert torch.equal(progress, top), 'the ranks disagree on the progress or the counts'
        state = json.loads(json.dumps(ld.state_dict())); ld.close()
        states = [None] * W; dist.all_gather_object(states, state)
        assert all(s == state for s in states), 'the ranks disagree on the loader state'
        touched = [v for v, p in enumerate(packers) if p.next_seq > 0]
        assert touched == ld.owned, (touched, ld.owned)   # a rank renders and packs its own lanes, no other
        resumed = DataLoader(make(), b, rank, W, prefetch=prefetch, state=state)
        got += [resumed.next_microbatch() for _ in range(N)]; resumed.close()
        for k, ((x, y), (wx, wy)) in enumerate(zip(got, want)):
            assert torch.equal(x, wx) and torch.equal(y, wy), (name, prefetch, k)
        print(f"rank {rank}: {name} prefetch {prefetch}: rows identical to one process's over {2 * N} micro-batches "
              f"(resumed after {N}); packed lanes {touched} of {S}", flush=True)
print0("data ddp ok")
compute_cleanup()
