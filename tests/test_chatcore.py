"""Benchmarks inside the training loop, on the real command lines: ChatCORE in SFT every 2 steps under a 2-process
torchrun (the same categorical counts as one process, problems split unevenly across the ranks), the tasks without data
skipped in one line, the report's table over steps; CORE in pretraining on the fixture bundle, and one line without it."""
import json
from pathlib import Path

import pytest

from conftest import MID, TINY, base_dir_with_tokenizer, run_dir, stage

FIX = Path(__file__).parent / 'fixtures'
TASKS = ['--task-path', f"ARC-Easy={FIX / 'chatcore' / 'arc_easy.jsonl'}", '--task-path', f"MMLU={FIX / 'chatcore' / 'mmlu.jsonl'}"]

def records(bd, stage_dir, tag, key) -> list[dict]:
    "The records of a run's metrics.jsonl that carry `key`."
    lines = (run_dir(bd, stage_dir, tag) / 'metrics.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]

@pytest.fixture(scope='module')
def bd(tmp_path_factory):
    "A 4-step base run that measures CORE on the fixture bundle every 2 steps."
    bd = base_dir_with_tokenizer(tmp_path_factory, 'chatcore')
    res = stage('nanolit.base_train', TINY + ['--num-iterations', '4', '--model-tag', 'd2', '--core-metric-every', '2',
                                              '--core-metric-max-per-task', '2', '--eval-bundle', str(FIX / 'core_bundle')], bd)
    bd.joinpath('base_stdout.txt').write_text(res.stdout)
    return bd

def test_base_train_logs_core_metric(bd):
    core = records(bd, 'base_checkpoints', 'd2', 'core_metric')
    assert [r['step'] for r in core] == [2, 4]                    # nanochat's cadence: step N, 2N, ... and the last
    for r in core:
        assert len(r['centered_results']) == 7
        assert abs(r['core_metric'] - sum(r['centered_results'].values()) / 7) < 1e-12
    assert 'core_metric over steps' in (run_dir(bd, 'base_checkpoints', 'd2') / 'report.md').read_text()

def test_base_train_without_a_bundle_says_so_and_trains(bd):
    res = stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'nob', '--core-metric-every', '1',
                                              '--eval-bundle', str(bd / 'no_bundle')], bd)
    assert sum('CORE skipped' in l for l in res.stdout.splitlines()) == 1, res.stdout
    assert records(bd, 'base_checkpoints', 'nob', 'core_metric') == []

def test_sft_chatcore_two_processes_equals_one(bd):
    args = MID + ['--source', 'base', '--model-tag', 'd2', '--num-iterations', '4', '--chatcore-every', '2',
                  '--chatcore-max-sample', '4'] + TASKS
    out = {}
    for nproc in (1, 2):
        res = stage('nanolit.sft', args + ['--output-tag', f's{nproc}'], bd, nproc=nproc)
        skip = [l for l in res.stdout.splitlines() if 'skipped for lack of data' in l]
        assert len(skip) == 1 and 'ARC-Challenge, GSM8K, HumanEval' in skip[0], res.stdout   # one line, rank 0
        out[nproc] = records(bd, 'chatsft_checkpoints', f's{nproc}', 'chatcore_metric')
    for nproc, recs in out.items():
        assert [r['step'] for r in recs] == [0, 2, 4], recs
        assert all(r['chatcore_tasks'] == 'ARC-Easy,MMLU,SpellingBee' for r in recs)
        for r in recs:   # nanochat's centring: 25% chance for the letters, 0 for generated answers
            cen = [(r['chatcore/ARC-Easy'] - .25) / .75, (r['chatcore/MMLU'] - .25) / .75, r['chatcore/SpellingBee']]
            assert abs(r['chatcore_metric'] - sum(cen) / 3) < 1e-12 and abs(r['chatcore_cat'] - sum(cen[:2]) / 2) < 1e-12
    print('ChatCORE, 1 process:', out[1], '\nChatCORE, 2 processes:', out[2])
    for a, b in zip(out[1], out[2]):
        assert (a['chatcore/ARC-Easy'], a['chatcore/MMLU']) == (b['chatcore/ARC-Easy'], b['chatcore/MMLU'])   # 7 and 5 problems
        assert abs(a['chatcore/SpellingBee'] - b['chatcore/SpellingBee']) <= 1 / 4 + 1e-12                   # within one problem
    report = (run_dir(bd, 'chatsft_checkpoints', 's2') / 'report.md').read_text()
    assert 'chatcore_metric over steps' in report and '| 4 |' in report

def test_chatcore_off_and_bad_task_path(bd):
    res = stage('nanolit.sft', MID + ['--source', 'base', '--model-tag', 'd2', '--num-iterations', '1', '--chatcore-every',
                                      '-1', '--output-tag', 'off'], bd)
    assert 'ChatCORE' not in res.stdout and records(bd, 'chatsft_checkpoints', 'off', 'chatcore_metric') == []
    res = stage('nanolit.sft', MID + ['--source', 'base', '--model-tag', 'd2', '--num-iterations', '1', '--task-path',
                                      'HellaSwag=x.jsonl', '--chatcore-every', '2', '--output-tag', 'bad'], bd, expect=1)
    assert 'ChatCORE has no such task' in res.stderr.strip().splitlines()[-1]
