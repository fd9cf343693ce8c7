"""Hub tasks read from local files in their real schemas (fixtures written for nanolit), and fail fast offline."""
from pathlib import Path

import pytest

from nanolit.tasks import ARC, GSM8K, MMLU, SmolTalk, TaskMixture
from nanolit.tokenizer import Tokenizer

FIX = Path(__file__).parent / 'fixtures'

@pytest.fixture(scope='module')
def tok():
    texts = [l for f in FIX.glob('*.jsonl') for l in f.read_text().splitlines()] * 20
    return Tokenizer.train(texts, vocab_size=400)

def test_local_files_in_each_schema(tok):
    smol = SmolTalk(path=FIX / 'smoltalk.jsonl')
    assert len(smol) == 3 and smol[1]['messages'][0]['role'] == 'system'
    mmlu = MMLU(path=FIX / 'mmlu.jsonl')
    assert mmlu[0]['messages'][1]['content'] == 'B' and 'A. Venus' in mmlu[0]['messages'][0]['content']
    assert MMLU(path=FIX / 'mmlu_aux.jsonl')[0]['messages'][1]['content'] == 'B'   # auxiliary_train nests rows
    arc = ARC(path=FIX / 'arc.jsonl')
    assert [arc[i]['messages'][1]['content'] for i in range(2)] == ['B', 'C'] and arc[1]['letters'] == ['A', 'B', 'C']
    gsm = GSM8K(path=FIX / 'gsm8k.jsonl')
    assert gsm[0]['answer'] == '31' and gsm.evaluate(gsm[0], 'so #### 31') and not gsm.evaluate(gsm[0], '#### 30')
    mix = TaskMixture([smol, mmlu, arc, gsm])
    for i in range(len(mix)):                              # every example renders, with something to train on
        ids, mask = tok.render_conversation(mix[i])
        assert sum(mask) > 0

def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(ConnectionError, match='nanolit_eval: --task-path GSM8K=<file or folder>') as e:
        GSM8K(split='train')
    assert 'path=' not in str(e.value) and '\n' not in str(e.value)   # a command-line user has no Python argument
