"""`nanolit_export` end to end: tiny models trained by the stage commands are exported, then loaded by transformers in a
process where nanolit cannot be imported; its logits, token ids, chat ids and greedy `generate` must equal nanolit's."""
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import MID, TINY, base_dir_with_tokenizer, one_line_error, run, stage

pytest.importorskip('transformers', reason="the export tests need the export extra: pip install 'nanolit[export]'")

LOADER = Path(__file__).parent / 'fixtures' / 'export' / 'load_with_transformers.py'
TEXTS = ["It's 2025: I'LL pay 1234567 dollars!\n\n\tdon't   stop  ", 'def f(x):\n    return x ** 2  # ünïcödé 日本語 🎉',
         '   leading and trailing spaces   ', 'a\r\nb']
CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is the capital of France?'}],
    [{'role': 'system', 'content': 'Answer briefly.'}, {'role': 'user', 'content': ' Name a colour. '},
     {'role': 'assistant', 'content': 'Blue.'}, {'role': 'user', 'content': 'And\n\nanother?'}],
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'Hello! How can I help?'}]]
MAX_NEW = 16

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A base directory with a tiny base model (tag d2) and an SFT model made from it through midtraining (tag d2)."
    bd = base_dir_with_tokenizer(tmp_path_factory, 'export')
    stage('nanolit.base_train', TINY + ['--num-iterations', '6', '--model-tag', 'd2'], bd)
    stage('nanolit.midtrain', MID + ['--num-iterations', '3', '--model-tag', 'd2'], bd)
    stage('nanolit.sft', MID + ['--num-iterations', '3', '--model-tag', 'd2'], bd)
    return bd

def export(bd, source, out) -> str:
    res = run([sys.executable, '-m', 'nanolit.export', '--source', source, '--model-tag', 'd2', '--output', str(out)],
              {'NANOLIT_BASE_DIR': str(bd)})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout

def load_with_transformers(folder, tmp_path, request: dict, python=sys.executable) -> dict:
    "Run the loader in a fresh process where `import nanolit` fails, with its own transformers module cache."
    (tmp_path / 'request.json').write_text(json.dumps(request))
    res = run([python, str(LOADER), str(folder), str(tmp_path / 'request.json'), str(tmp_path / 'answer.json')],
              {'HF_HOME': str(tmp_path / 'hf')}, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads((tmp_path / 'answer.json').read_text())

def nanolit_side(bd, source, monkeypatch):
    "What nanolit itself computes: logits of a prompt, ids of the texts and conversations, the engine's greedy reply."
    monkeypatch.setenv('NANOLIT_BASE_DIR', str(bd))
    from nanolit.checkpoint import load_model
    from nanolit.engine import Engine
    model, tok, _ = load_model(source, 'cpu', 'eval', 'd2')
    prompt = tok.encode(TEXTS[0] + TEXTS[1], prepend='<|bos|>')
    with torch.no_grad(): logits = model(torch.tensor([prompt]))[0]
    start = tok.render_for_completion({'messages': CONVERSATIONS[0]})
    column = [c[0] for c, _ in Engine(model, tok).generate(start, 1, max_tokens=MAX_NEW, temperature=0)]
    # "tools off": the comparison holds while the reply calls no tool (the engine would then write the tool's output)
    assert tok.encode_special('<|python_end|>') not in column, 'the reply called the calculator: pick another prompt'
    return dict(prompt=prompt, logits=logits, texts=[tok.encode(t) for t in TEXTS],
                chats=[tok.render_conversation({'messages': c})[0] for c in CONVERSATIONS],
                completions=[tok.render_for_completion({'messages': c}) for c in CONVERSATIONS], start=start,
                reply=column)

def check_equal(mine: dict, theirs: dict):
    diff = (torch.tensor(theirs['logits']) - mine['logits']).abs().max().item()
    assert diff <= 1e-4, f'largest logit difference {diff:.2e}'
    assert theirs['texts'] == mine['texts']
    assert theirs['chats'] == mine['chats'] and theirs['completions'] == mine['completions']
    assert theirs['reply'] == mine['reply'], (theirs['reply'], mine['reply'])

@pytest.mark.parametrize('source', ['base', 'sft'])
def test_export_loads_in_transformers_and_equals_nanolit(trained, source, tmp_path, monkeypatch):
    out = tmp_path / 'exported'
    said = export(trained, source, out)
    assert 'generated modeling_nanolit.py' in said and 'trust_remote_code=True' in said, said   # defaults: value embeds...
    assert {'config.json', 'model.safetensors', 'modeling_nanolit.py', 'tokenizer.json', 'generation_config.json'} <= \
        {p.name for p in out.iterdir()}
    mine = nanolit_side(trained, source, monkeypatch)
    theirs = load_with_transformers(out, tmp_path, dict(prompt=mine['prompt'], texts=TEXTS, conversations=CONVERSATIONS,
                                                        start=mine['start'], max_new_tokens=MAX_NEW))
    check_equal(mine, theirs)
    assert theirs['model_class'] == 'NanolitForCausalLM' and theirs['nanolit_importable'] is False

def test_export_errors_are_one_line(trained, tmp_path):
    env = {'NANOLIT_BASE_DIR': str(trained)}
    out = tmp_path / 'x'
    out.mkdir(); (out / 'keep.txt').write_text('not ours')
    cmd = [sys.executable, '-m', 'nanolit.export', '--source', 'base', '--output', str(out)]
    one_line_error(run(cmd, env), 'already exists', 'pass another --output')
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    one_line_error(run([sys.executable, '-m', 'nanolit.export', '--source', 'mid', '--model-tag', 'nope'], env),
                   'no checkpoint in')
    hide = "import sys; sys.modules['transformers'] = None; from nanolit.export import main; main()"
    one_line_error(run([sys.executable, '-c', hide, '--source', 'base', '--output', str(tmp_path / 'y')], env),
                   "pip install 'nanolit[export]'")
    assert not (tmp_path / 'y').exists()
