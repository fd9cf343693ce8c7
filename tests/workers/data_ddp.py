"""Run under torchrun: each rank renders only its slice of every block (all-gathered over gloo), and its rows are
bitwise those of today's design (one process packing the whole global batch and slicing it), with and without the
prefetch thread, for pretraining documents (crop) and a conversation mixture with replay (pad), and after a resume."""
import json
import time

import torch
import torch.distributed as dist

from nanolit.common import compute_cleanup, compute_init, print0
from nanolit.corpus import iter_texts, prepare_embedded_corpus
from nanolit.data import BestFitPacker, DataLoader, DocumentStream, TaskStream, leaf_streams
from nanolit.tasks import MixtureStream, TaskMixture, build_task, mixture_spec
from nanolit.tokenizer import Tokenizer

info = compute_init('cpu')
W, rank, b, T, N = info.world_size, info.rank, 2, 128, 12
data_dir = prepare_embedded_corpus()
tok = Tokenizer.train(iter_texts(data_dir, 'train'), vocab_size=1024, max_chars=300_000)

def crop():
    return BestFitPacker(DocumentStream(data_dir, 'train', tok, max_len=T + 1, batch_docs=8), T, 'crop', 40)

def pad():
    spec = mixture_spec('default', 'train', scale=0.01)
    ts = TaskStream(TaskMixture([t for e in spec for t in [build_task(e)] * int(e.get('epochs', 1))], 42), tok, T + 1, 'assistant')
    ts.block_keys = 16
    replay = DocumentStream(data_dir, 'train', tok, max_len=T + 1, batch_docs=4)
    return BestFitPacker(MixtureStream({'tasks': ts, 'replay': replay}, {'tasks': 0.7, 'replay': 0.3}, ['tasks']), T, 'pad', 30)

def counting(packer):
    "Count the keys this rank renders itself (in blocks)."
    packer.rendered = 0
    for s in leaf_streams(packer.stream):
        def render_keys(keys, f=s.render_keys): packer.rendered += len(keys); return f(keys)
        s.render_keys = render_keys
    return packer

for name, make in (('crop', crop), ('pad', pad)):
    ref = DataLoader(make(), b * W)                       # today's design: the whole global batch, sliced
    want = [tuple(t[rank * b:(rank + 1) * b] for t in ref.next_microbatch()) for _ in range(2 * N)]
    for prefetch in (0, 2):
        p = counting(make())
        ld = DataLoader(p, b, rank, W, prefetch=prefetch)
        assert ld.split.distributed and ld.split.deferred == (prefetch > 0)
        got = []
        for k in range(N):
            got.append(ld.next_microbatch())
            t = torch.ones(1); dist.all_reduce(t)         # the training loop's own collectives, interleaved
            if k % 3 == rank: time.sleep(0.05)            # ranks out of step
        state = json.loads(json.dumps(ld.state_dict())); ld.close()
        states = [None] * W; dist.all_gather_object(states, state)
        assert all(s == state for s in states), 'the ranks disagree on the loader state'
        resumed = DataLoader(make(), b, rank, W, prefetch=prefetch, state=state)
        got += [resumed.next_microbatch() for _ in range(N)]; resumed.close()
        for k, ((x, y), (wx, wy)) in enumerate(zip(got, want)):
            assert torch.equal(x, wx) and torch.equal(y, wy), (name, prefetch, k)
        mine = torch.tensor([p.rendered]); total = mine.clone(); dist.all_reduce(total)
        assert p.rendered * W <= total.item() * 1.01, (p.rendered, total.item())   # an equal share, none redundant
        print(f"rank {rank}: {name} prefetch {prefetch}: rows identical to today's design over {2 * N} micro-batches "
              f"(resumed after {N}); rendered {p.rendered} of {total.item()} keys", flush=True)
print0("data ddp ok")
compute_cleanup()
