"""Bad rows through the command lines. By default the first row that cannot become a conversation stops midtraining,
on every rank, with one line naming the file, the row and what to do; `--skip-bad-rows` skips and counts them by
reason (metrics.jsonl, summary.json, report.md), the counts survive a SIGTERM and an exact resume, and more than
`--max-bad-fraction` of bad rows still stops the run. `nanolit_eval` meets a bad row of a task file the same way."""
import json

import pytest

from conftest import MID, TINY, base_dir_with_tokenizer, losses, one_line_error, run_dir, stage

GOOD = {'messages': [{'role': 'user', 'content': 'What is 2 + 2?'}, {'role': 'assistant', 'content': 'It is 4.'}]}
TWO_USERS = {'messages': [{'role': 'user', 'content': 'a'}, {'role': 'user', 'content': 'b'}]}     # role_order

def chat_file(path, n: int, bad_lines: list[int]):
    rows = [TWO_USERS if i + 1 in bad_lines else GOOD for i in range(n)]
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path

def ranks_error(res, *must):
    "Under torchrun: the run failed, and every rank that printed an error printed the same line, with each of `must`."
    lines = [l for l in res.stderr.splitlines() if ': error: ' in l]
    assert res.returncode != 0 and lines and len(set(lines)) == 1, res.stderr[-3000:]
    for m in must: assert m in lines[0], lines[0]

def mixture(path, data):
    path.write_text(f"train:\n  - {{task: Chat, path: {data}}}\nval:\n  - {{task: Chat, path: {data}, stop: 4}}\n")
    return str(path)

@pytest.fixture(scope='module')
def bd(tmp_path_factory):
    d = base_dir_with_tokenizer(tmp_path_factory, 'badrows')
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'b'], d)
    return d

def mid(bd, mix, tag, *extra, **kw):
    return stage('nanolit.midtrain', MID + ['--model-tag', 'b', '--output-tag', tag, '--replay-ratio', '0', '--mixture', mix,
                                          *extra], bd, **kw)

def test_first_bad_row_stops_every_rank_with_one_line(bd, tmp_path):
    data = chat_file(tmp_path / 'chat.jsonl', 300, [7, 150])
    res = mid(bd, mixture(tmp_path / 'mix.yaml', data), 'strict', '--num-iterations', '3', nproc=2, check=False, timeout=240)
    ranks_error(res, f'{data} row 7: message 1 has role', '--skip-bad-rows')

def test_skip_counts_survive_a_resume_and_reach_the_report(bd, tmp_path):
    mix = mixture(tmp_path / 'mix.yaml', chat_file(tmp_path / 'chat.jsonl', 300, [7, 150]))
    args = ['--skip-bad-rows', '--num-iterations', '6', '--save-every', '2']
    mid(bd, mix, 'skip', *args)
    mid(bd, mix, 'skipstop', *args, env={'NANOLIT_TEST_SIGTERM_AFTER_STEP': '3'}, expect=143)
    mid(bd, mix, 'skipstop', *args)
    assert losses(bd, 'mid_checkpoints', 'skipstop') == losses(bd, 'mid_checkpoints', 'skip')
    straight, resumed = [json.loads((run_dir(bd, 'mid_checkpoints', t) / 'summary.json').read_text())['bad_rows']
                         for t in ('skip', 'skipstop')]
    assert straight == resumed and straight['role_order'] >= 2 and set(straight) == {'rows_read', 'role_order'}, straight
    logged = [json.loads(l) for l in (run_dir(bd, 'mid_checkpoints', 'skip') / 'metrics.jsonl').read_text().splitlines()]
    assert [r['bad_rows'] for r in logged if 'loss' in r][-1] == straight
    report = (run_dir(bd, 'mid_checkpoints', 'skip') / 'report.md').read_text()
    assert f"bad rows skipped: {straight['role_order']:,} of {straight['rows_read']:,} read (role_order" in report

def test_too_many_bad_rows_stop_a_skipping_run(bd, tmp_path):
    data = chat_file(tmp_path / 'chat.jsonl', 100, list(range(5, 100, 10)))                  # 10% bad
    res = mid(bd, mixture(tmp_path / 'mix.yaml', data), 'toomany', '--skip-bad-rows', '--num-iterations', '2', check=False)
    one_line_error(res, 'too many bad rows', '--max-bad-fraction')
    mid(bd, mixture(tmp_path / 'mix.yaml', data), 'enough', '--skip-bad-rows', '--max-bad-fraction', '0.2',
        '--num-iterations', '2')

def test_eval_meets_bad_rows_as_told(bd, tmp_path):
    stage('nanolit.midtrain', MID + ['--model-tag', 'b', '--output-tag', 'e', '--num-iterations', '1'], bd)
    folder = tmp_path / 'gsm8k'; folder.mkdir()
    good = lambda i: {'question': f'What is {i} + 1?', 'answer': f'{i} + 1 = {i + 1}.\n#### {i + 1}'}
    rows = [good(i) for i in range(9)]; rows[4] = {'question': 'no answer here'}
    (folder / 'test.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    ev = ['--source', 'mid', '--model-tag', 'e', '--tasks', 'GSM8K', '--task-path', f'GSM8K={folder}', '--max-tokens', '4']
    res = stage('nanolit.eval', ev, bd, nproc=2, check=False, timeout=240)       # rank 0 meets it; rank 1 must not wait
    ranks_error(res, 'test.jsonl row 5', "no 'answer' field", '--skip-bad-rows')
    out = tmp_path / 'eval.json'
    stage('nanolit.eval', ev + ['--skip-bad-rows', '--max-bad-fraction', '0.5', '--out', str(out)], bd, nproc=2)
    (r,) = json.loads(out.read_text())['results']
    assert r['problems'] == 8 and r['bad_rows'] == {'missing_field': 1}, r
    one_line_error(stage('nanolit.eval', ['--source', 'mid', '--model-tag', 'e', '--tasks', 'SmolTalk'], bd, check=False),
                   'SmolTalk cannot be evaluated')
