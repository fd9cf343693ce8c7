"""nanolit_eval's CORE and HumanEval wiring, end to end on a tiny base model and the fixtures: CORE on the fixture bundle
(every task scored, CORE the mean of the centred accuracies), HumanEval through the sandbox, and a missing bundle as one
line that says what to fetch; a GSM8K folder evaluated on its test split alone."""
import json
from pathlib import Path

import pytest

from conftest import TINY, base_dir_with_tokenizer, one_line_error, stage

FIX = Path(__file__).parent / 'fixtures'

@pytest.fixture(scope='module')
def bd(tmp_path_factory):
    bd = base_dir_with_tokenizer(tmp_path_factory, 'evalcli')
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 't'], bd)
    return bd

def test_core_on_the_fixture_bundle(bd, tmp_path):
    out = tmp_path / 'eval.json'
    res = stage('nanolit.eval', ['--core', '--model-tag', 't', '--eval-bundle', str(FIX / 'core_bundle'), '--max-per-task', '3',
                                 '--out', str(out)], bd)
    got = json.loads(out.read_text())
    assert got['source'] == 'base' and 'results' not in got          # --core alone: the base model, no chat tasks
    tasks = got['core']['tasks']
    assert len(tasks) == 7 and all(t['examples'] == 3 for t in tasks.values()), tasks
    assert abs(got['core']['core'] - sum(t['centered'] for t in tasks.values()) / 7) < 1e-12
    assert 'hellaswag' in res.stdout

def test_missing_bundle_is_one_line(bd, tmp_path):
    res = stage('nanolit.eval', ['--core', '--model-tag', 't', '--eval-bundle', str(tmp_path / 'nope')], bd, expect=1)
    one_line_error(res, '--eval-bundle')

def test_humaneval_through_the_sandbox(bd, tmp_path):
    out = tmp_path / 'eval.json'
    stage('nanolit.eval', ['--source', 'base', '--model-tag', 't', '--tasks', 'HumanEval', '--task-path',
                           f"HumanEval={FIX / 'humaneval.jsonl'}", '--max-tokens', '16', '--out', str(out)], bd, timeout=300)
    (r,) = json.loads(out.read_text())['results']
    assert r['task'] == 'HumanEval' and r['problems'] == 4           # a 2-step model writes no passing code: 0 of 4

def test_a_gsm8k_folder_gives_its_test_split_only(bd, tmp_path):
    out, folder = tmp_path / 'eval.json', FIX / 'layouts' / 'gsm8k'          # train.jsonl (4 rows) and test.jsonl (3)
    res = stage('nanolit.eval', ['--source', 'base', '--model-tag', 't', '--tasks', 'GSM8K', '--task-path', f'GSM8K={folder}',
                                 '--max-tokens', '4', '--out', str(out)], bd)
    (r,) = json.loads(out.read_text())['results']
    assert r['task'] == 'GSM8K' and r['problems'] == 3, r
    assert str(folder / 'test.jsonl') in res.stdout and 'train.jsonl' not in res.stdout, res.stdout
