"""Local data in the layouts users have (tiny made-up fixtures under tests/fixtures/layouts/): exact row counts per
split, never two splits from one folder, chat formats, and each kind of bad row: one line when strict, counted when
skipped, the counts surviving an exact resume of the loader."""
import json
import re
from pathlib import Path

import pytest

from nanolit.data import BadRowPolicy, BestFitPacker, DataLoader, TaskStream
from nanolit.files import load_rows
from nanolit.tasks import ARC, GSM8K, MMLU, Chat, CustomJSON, mixture_spec, mixture_streams
from nanolit.tokenizer import BAD_ROW_REASONS, BadRow, Tokenizer

LAYOUTS = Path(__file__).parent / 'fixtures' / 'layouts'
SPLIT_WORDS = {'train': 'train', 'test': 'test', 'validation': 'val', 'val': 'val', 'dev': 'dev'}

@pytest.fixture(scope='module')
def tok():
    texts = [p.read_text(errors='ignore') for p in LAYOUTS.rglob('*') if p.suffix in ('.jsonl', '.json', '.csv')] * 30
    return Tokenizer.train(texts, vocab_size=400)

def test_row_counts_per_split_are_exact():
    counts = {('gsm8k', s): len(GSM8K(split=s, path=LAYOUTS / 'gsm8k')) for s in ('train', 'test')}
    counts.update({('mmlu', s): len(MMLU(split=s, path=LAYOUTS / 'mmlu' / 'data')) for s in ('test', 'validation', 'dev')})
    counts[('mmlu aux', 'train')] = len(MMLU('auxiliary_train', 'train', LAYOUTS / 'mmlu' / 'data'))
    counts.update({(sub, s): len(ARC(sub, s, LAYOUTS / 'ai2_arc')) for sub in ('ARC-Easy', 'ARC-Challenge')
                   for s in ('train', 'validation', 'test')})
    counts.update({('saved', s): len(Chat(path=LAYOUTS / 'saved_chat', split=s)) for s in ('train', 'test')})
    counts[('sharegpt', 'train')] = len(Chat(path=LAYOUTS / 'sharegpt.json'))
    assert counts == {('gsm8k', 'train'): 4, ('gsm8k', 'test'): 3, ('mmlu', 'test'): 6, ('mmlu', 'validation'): 4,
                      ('mmlu', 'dev'): 4, ('mmlu aux', 'train'): 3,
                      ('ARC-Easy', 'train'): 4, ('ARC-Easy', 'validation'): 2, ('ARC-Easy', 'test'): 3,
                      ('ARC-Challenge', 'train'): 2, ('ARC-Challenge', 'validation'): 1, ('ARC-Challenge', 'test'): 5,
                      ('saved', 'train'): 3, ('saved', 'test'): 2, ('sharegpt', 'train'): 3}

def test_a_folder_never_yields_two_splits():
    "Every row a task reads comes from files whose path names one split, the one asked for (read back from the rows)."
    words = lambda f, top: {SPLIT_WORDS[w] for w in re.split(r'[^a-z]+', str(Path(f).relative_to(top)).lower()) if w in SPLIT_WORDS}
    made = [(lambda s: GSM8K(split=s, path=LAYOUTS / 'gsm8k'), LAYOUTS / 'gsm8k', ('train', 'test')),
            (lambda s: MMLU(split=s, path=LAYOUTS / 'mmlu' / 'data'), LAYOUTS / 'mmlu' / 'data', ('test', 'validation', 'dev')),
            (lambda s: ARC('ARC-Easy', s, LAYOUTS / 'ai2_arc'), LAYOUTS / 'ai2_arc', ('train', 'validation', 'test'))]
    for make, top, splits in made:
        for split in splits:
            task = make(split)
            found = set().union(*(words(task.rows.where(i).rsplit(' row ', 1)[0], top) for i in range(len(task))))
            assert found == {SPLIT_WORDS[split]}, (top, split, found)
    with pytest.raises(FileNotFoundError, match='not validation'):
        GSM8K(split='validation', path=LAYOUTS / 'gsm8k')

def test_load_rows_names_the_files_it_read(capsys):
    rows = load_rows('openai/gsm8k', 'main', 'test', LAYOUTS / 'gsm8k', task='GSM8K')
    assert len(rows) == 3 and rows.where(2).endswith('test.jsonl row 3')
    assert 'GSM8K: 3 test rows from' in capsys.readouterr().out

def test_mmlu_original_csvs_as_they_come():
    mmlu = MMLU(split='test', path=LAYOUTS / 'mmlu' / 'data')
    ex = mmlu[0]
    assert ex['messages'][1]['content'] == 'A' and 'with a comma?' in ex['messages'][0]['content']
    assert 'C. None' in ex['messages'][0]['content']           # "None" stays text, not a missing value
    assert [mmlu[i]['messages'][1]['content'] for i in range(4)] == ['A', 'B', 'C', 'D']

def test_csv_with_a_header_row(tmp_path):
    (tmp_path / 'test.csv').write_text('question,answer\n"What is 2 + 3?","2+3 = <<2+3=5>>5\n#### 5"\n')
    gsm = GSM8K(split='test', path=tmp_path)
    assert len(gsm) == 1 and gsm[0]['answer'] == '5'
    (tmp_path / 'test.csv').write_text('a,b,c\n1,2,3\n')
    with pytest.raises(ValueError, match='has 3 columns, the task reads 6'):
        MMLU(split='test', path=tmp_path)

def test_chat_formats_agree(tok):
    share = Chat(path=LAYOUTS / 'sharegpt.json')
    as_messages = [{'messages': [{'role': {'human': 'user', 'gpt': 'assistant', 'system': 'system'}[m['from']], 'content': m['value']}
                                 for m in row['conversations']]} for row in json.loads((LAYOUTS / 'sharegpt.json').read_text())]
    for i in range(len(share)):
        assert tok.render_conversation(share[i]) == tok.render_conversation(as_messages[i])
    assert CustomJSON(path=LAYOUTS / 'sharegpt.json')[1] == {**share[1], 'id': 'a2'}   # a .json list read by CustomJSON too

CHAT_KINDS = {2: 'no_messages', 3: 'role_order', 4: 'role_order', 5: 'non_string_content', 6: 'empty_content',
              7: 'unknown_role', 8: 'unknown_part', 9: 'unreadable'}

@pytest.mark.parametrize('line', sorted(CHAT_KINDS))
def test_each_bad_chat_row_is_one_line(tok, line):
    bad = LAYOUTS / 'bad' / 'chat.jsonl'
    with pytest.raises(BadRow) as e:
        TaskStream(CustomJSON(path=bad, start=line - 1, stop=line), tok, 256).next()
    assert e.value.reason == CHAT_KINDS[line]
    assert str(e.value).startswith(f"{bad} line {line}: ") and '\n' not in str(e.value)

def test_every_reason_has_a_fixture():
    assert set(CHAT_KINDS.values()) | {'missing_field', 'bad_answer'} == set(BAD_ROW_REASONS)

def test_bad_rows_skipped_and_counted_through_a_resume(tmp_path, tok):
    spec_file = tmp_path / 'mix.yaml'
    spec_file.write_text(f"train:\n  - {{task: CustomJSON, path: {LAYOUTS / 'bad' / 'chat.jsonl'}}}\n"
                         f"  - {{task: MMLU, path: {LAYOUTS / 'bad' / 'mmlu'}, split: test}}\n"
                         f"  - {{task: GSM8K, path: {LAYOUTS / 'bad' / 'gsm8k'}, split: test}}\n")
    spec = mixture_spec(str(spec_file))
    make = lambda policy: DataLoader([BestFitPacker(s, 127, 'pad', 4) for s in
                                      mixture_streams(spec, tok, 128, 'assistant', lanes=2, bad_rows=policy)], 2)
    with pytest.raises(BadRow, match=r"(line|row) \d+: .*; fix or remove the row"):   # strict: the first bad row stops
        ld = make(None)
        for _ in range(4): ld.next_microbatch()
    policy = BadRowPolicy(skip=True, max_fraction=1.0)
    ref = make(policy)
    for _ in range(3): ref.next_microbatch()
    state = json.loads(json.dumps(ref.state_dict()))
    counts = ref.bad_rows
    assert {k for k in counts if k != 'rows_read'} == set(BAD_ROW_REASONS)
    assert counts['role_order'] >= 2 and counts['rows_read'] >= 16
    tail = [ref.next_microbatch() for _ in range(3)]
    resumed = make(policy)
    resumed = DataLoader(resumed.lanes, 2, state=state)
    assert resumed.bad_rows == counts                                        # the counts survive the resume
    again = [resumed.next_microbatch() for _ in range(3)]
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(tail, again))
    assert resumed.bad_rows == ref.bad_rows
    with pytest.raises(BadRow, match='too many bad rows'):                  # 1%: far fewer than this file has
        ld = make(BadRowPolicy(skip=True))
        for _ in range(4): ld.next_microbatch()

def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / 'train.jsonl').write_text('{"question": "q", "answer": "#### 1"}\n')
    (tmp_path / 'train-2.jsonl').write_text('{"question": "q", "answer": \n')
    with pytest.raises(ValueError, match=r"train-2.jsonl could not be read as JSON") as e:
        GSM8K(split='train', path=tmp_path)
    assert '\n' not in str(e.value)

def test_tasks_without_answers_cannot_be_evaluated():
    smol = Chat(path=LAYOUTS / 'sharegpt.json')
    assert not smol.can_evaluate() and GSM8K.can_evaluate() and MMLU.can_evaluate() and not type(smol).can_evaluate()
    with pytest.raises(ValueError, match='Chat cannot be evaluated'):
        smol.evaluate(smol[0], 'anything')
