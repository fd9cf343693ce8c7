"""--sample-every: rank 0 prints greedy completions of the stage's fixed prompts every N steps and at the end, keeps them
in the run directory's samples.md (as text for base, as a user's turn for mid and SFT), and by default writes none."""
import pytest

from conftest import MID, TINY, base_dir_with_tokenizer, run_dir, stage

@pytest.fixture(scope='module')
def bd(tmp_path_factory): return base_dir_with_tokenizer(tmp_path_factory, 'samples')

def test_base_and_mid_write_samples(bd):
    res = stage('nanolit.base_train', TINY + ['--num-iterations', '5', '--sample-every', '2', '--model-tag', 's'], bd)
    text = (run_dir(bd, 'base_checkpoints', 's') / 'samples.md').read_text()
    assert [l for l in text.splitlines() if l.startswith('## step')] == ['## step 0', '## step 2', '## step 4', '## step 5']
    assert text.count("'def fibonacci(n):' -> ") == 4 and 'samples:' in res.stdout
    stage('nanolit.midtrain', MID + ['--model-tag', 's', '--num-iterations', '2', '--sample-every', '2'], bd)
    mid = (run_dir(bd, 'mid_checkpoints', 's') / 'samples.md').read_text()
    assert mid.count("\"How many 'e' are in 'cheese'?\" -> ") == 2      # steps 0 and 2, as a user's turn

def test_no_samples_by_default(bd):
    stage('nanolit.base_train', TINY + ['--num-iterations', '2', '--model-tag', 'quiet'], bd)
    assert not (run_dir(bd, 'base_checkpoints', 'quiet') / 'samples.md').exists()
