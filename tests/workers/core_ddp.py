"""Run under torchrun: CORE of a tiny random GPT on the fixture bundle; rank 0 writes the per-task counts as JSON."""
import json
import sys

import torch

from nanolit.common import compute_cleanup, compute_init
from nanolit.core import evaluate_core
from nanolit.model import GPT, GPTConfig
from nanolit.tokenizer import get_tokenizer

bundle, tokenizer_dir, out_path = sys.argv[1:4]
info = compute_init('cpu')
tok = get_tokenizer(tokenizer_dir)
torch.manual_seed(0)   # the same weights on every rank, in every world size
model = GPT(GPTConfig(sequence_len=32, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64))
# a small context (rotary_len 64) so that the few-shot prompts are cropped from the left; small batches
out = evaluate_core(model, tok, bundle, max_per_task=-1, device=info.device, batch_tokens=512)
if info.is_primary:
    counts = {k: [r['correct'], r['examples']] for k, r in out['tasks'].items()}
    with open(out_path, 'w') as f: json.dump({'core': out['core'], 'counts': counts}, f)
compute_cleanup()
