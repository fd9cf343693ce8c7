"""Rules that only a GPU run would otherwise check, made checkable on the CPU.

1. Every collective's tensor lives on the compute device (NCCL takes only CUDA tensors; gloo, which CI runs, takes
   CPU ones): nanolit's collectives all go through the checked helpers of `nanolit.common`.
2. q, k and v reach the attention call in one dtype (Flash-Attention 3 refuses a mix), under bf16 autocast too.
3. KV-cached generation gives the logits of the plain forward pass, up to 2 × sequence_len.
"""
import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import WORKERS, run, torchrun_cmd
from nanolit.common import (all_gather, all_gather_into_tensor, all_reduce, barrier, broadcast, collective_device,
                            record_collective_device, reduce_scatter_tensor)
from nanolit.model import GPT, GPTConfig, KVCache, randomize_

PACKAGE = Path(__file__).resolve().parent.parent / 'nanolit'

# --- 1. collectives ---------------------------------------------------------------------------------------------
COLLECTIVES = {  # torch.distributed's functions that move tensors between ranks, or wait for all of them
    'all_reduce', 'all_reduce_coalesced', 'broadcast', 'broadcast_object_list', 'all_gather', 'all_gather_object',
    'all_gather_into_tensor', 'all_gather_single', 'all_gather_coalesced', 'reduce', 'reduce_scatter',
    'reduce_scatter_tensor', 'reduce_scatter_single', 'gather', 'gather_object', 'scatter', 'scatter_object_list',
    'all_to_all', 'all_to_all_single', 'send', 'recv', 'isend', 'irecv', 'batch_isend_irecv', 'barrier',
    'monitored_barrier'}
HELPERS = {'all_reduce', 'broadcast', 'all_gather', 'all_gather_into_tensor', 'reduce_scatter_tensor', 'barrier'}  # in common.py


def direct_collectives(source: str, module: str = 'x.py') -> list[str]:
    "Every use of a torch.distributed collective in `source` outside common.py's helpers, as 'module:line: name'."
    tree = ast.parse(source)
    aliases = set()   # names bound to torch.distributed
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == 'torch.distributed' and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == 'torch':
            aliases |= {a.asname or a.name for a in node.names if a.name == 'distributed'}
    def is_dist(node):
        if isinstance(node, ast.Name): return node.id in aliases
        return (isinstance(node, ast.Attribute) and node.attr == 'distributed'
                and isinstance(node.value, ast.Name) and node.value.id == 'torch')
    found = []
    def visit(node, func):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and is_dist(node.value): name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'getattr'
              and len(node.args) >= 2 and is_dist(node.args[0]) and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in COLLECTIVES): name = node.args[1].value
        elif isinstance(node, ast.ImportFrom) and node.module == 'torch.distributed':
            name = ','.join(a.name for a in node.names if a.name in COLLECTIVES) or None
        if name and not (module == 'common.py' and func in HELPERS):
            found.append(f"{module}:{node.lineno}: dist.{name}" + (f" (in {func})" if func else ''))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): func = node.name
        for child in ast.iter_child_nodes(node): visit(child, func)
    visit(tree, None)
    return found


def test_the_scan_sees_every_form_of_a_direct_call():
    src = ("import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
           "from torch.distributed import barrier\n"
           "def f(t):\n    dist.all_reduce(t); d2.broadcast(t, 0); torch.distributed.barrier()\n"
           "    (getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor)(t, t)\n"
           "    dist.get_rank(); dist.is_initialized()\n")
    names = [f.split(': ')[1].split(' ')[0] for f in direct_collectives(src)]
    assert names == ['dist.barrier', 'dist.all_reduce', 'dist.broadcast', 'dist.barrier', 'dist.all_gather_single',
                     'dist.all_gather_into_tensor'], names
    helper = "import torch.distributed as dist\ndef all_reduce(t):\n    dist.all_reduce(t)\n"
    assert direct_collectives(helper, 'common.py') == [] and direct_collectives(helper, 'train.py') != []


def test_no_module_calls_a_collective_directly():
    "nanolit's collectives all go through nanolit.common's checked helpers (all_reduce, broadcast, ..., barrier)."
    found = [f for path in sorted(PACKAGE.glob('*.py')) for f in direct_collectives(path.read_text(), path.name)]
    assert not found, ("direct torch.distributed collectives, which skip the compute-device check: use "
                       "nanolit.common's all_reduce / broadcast / all_gather / all_gather_into_tensor / reduce_scatter_tensor / "
                       "barrier instead:\n" + '\n'.join(found))


@pytest.fixture
def group_of_one():
    "A gloo process group of this one process (no torchrun), destroyed afterwards."
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try: yield
    finally: dist.destroy_process_group()


@pytest.mark.parametrize('device', ['meta', torch.device('cuda', 0)])
def test_collectives_refuse_a_tensor_off_the_compute_device(group_of_one, device):
    "The GPU rule on a CPU: with a GPU (or meta) recorded as the compute device, a CPU tensor is refused."
    record_collective_device(device)
    t = torch.ones(4)
    calls = {'all_reduce': lambda: all_reduce(t), 'broadcast': lambda: broadcast(t),
             'all_gather': lambda: all_gather([torch.empty(4)], t),
             'all_gather_into_tensor': lambda: all_gather_into_tensor(torch.empty(4), t),
             'reduce_scatter_tensor': lambda: reduce_scatter_tensor(torch.empty(4), t, async_op=True)}
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=rf"{name} was given a tensor on cpu, .* create it there"): call()


def test_collectives_pass_on_the_compute_device(group_of_one):
    assert collective_device() == torch.device('cpu')   # gloo, nothing recorded
    record_collective_device('cpu')
    assert all_reduce(torch.ones(3), 'max').tolist() == [1.0] * 3
    assert all_gather_into_tensor(torch.empty(3), torch.ones(3)).tolist() == [1.0] * 3
    barrier()


def test_collectives_in_a_world_of_one_and_the_record_dies_with_the_group():
    assert not dist.is_initialized() and collective_device() is None
    t = torch.arange(4.0)
    assert all_reduce(t) is t and broadcast(t) is t
    assert reduce_scatter_tensor(torch.empty(4), t).tolist() == t.tolist()
    assert all_reduce(t, async_op=True).wait()
    with pytest.raises(ValueError, match='divide the sum'): all_reduce(t, 'avg')
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    record_collective_device('meta')
    dist.destroy_process_group()
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try: assert collective_device() == torch.device('cpu')   # a new group: the old record is gone
    finally: dist.destroy_process_group()


def test_helpers_and_eval_counts_under_torchrun():
    "Two real processes (gloo): every helper, and nanolit_eval's counts summed across ranks."
    res = run(torchrun_cmd(2, WORKERS / 'gpu_rules_collectives.py'), timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert out.count('collectives ok, eval') == 2, out


# --- 2. attention dtypes -----------------------------------------------------------------------------------------
class AttentionInputs(TorchFunctionMode):
    "Records the dtypes of q, k, v as each `scaled_dot_product_attention` call receives them (before autocast)."
    def __init__(self):
        super().__init__(); self.dtypes = []
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention: self.dtypes.append(tuple(str(a.dtype) for a in args[:3]))
        return func(*args, **(kwargs or {}))


def test_attention_inputs_share_a_dtype_under_bf16_autocast():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, short_window=4)
    model = randomize_(GPT(cfg))
    idx = torch.randint(0, 64, (2, 16))
    with torch.autocast('cpu', dtype=torch.bfloat16), AttentionInputs() as seen:
        loss = model(idx, idx)
    loss.backward()
    assert seen.dtypes == [('torch.bfloat16',) * 3] * cfg.n_layer, seen.dtypes   # value-embedding layers included
    assert torch.isfinite(loss) and model.value_embeds['1'].weight.grad is not None


# --- 3. KV cache past sequence_len ---------------------------------------------------------------------------------
def test_kv_cache_matches_the_forward_pass_to_twice_sequence_len():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, short_window=4)
    model = randomize_(GPT(cfg)).eval()
    T = 2 * cfg.sequence_len
    assert model.rotary_len == T
    seq = torch.randint(0, 64, (1, T))
    with torch.no_grad():
        full = model(seq)
        cache = KVCache(cfg, 1, T)
        cached = torch.cat([model(seq[:, :5], kv_cache=cache)] +
                           [model(seq[:, t:t + 1], kv_cache=cache) for t in range(5, T)], dim=1)
    err = (cached - full).abs().amax(-1)[0]
    assert err.max() <= 1e-4, f"cached and plain logits differ by {err.max():.2e} (worst at position {err.argmax()})"
