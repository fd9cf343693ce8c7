"""FP8 through the real CLIs, on the CPU (chapter 3c).

`--fp8 1` on a device without FP8 tensor cores warns in one line and trains exactly as without it (nanochat's
behaviour). `--fp8-emulate 1` runs the FP8 numerics anywhere: a model wide enough for the filter (width 128: depth 2,
aspect ratio 64, head dim 64; the d2 test model of TINY, width 64, has no linear of 128 or more) converts the 12 linears
of its 2 blocks, trains 20 steps within 2% of the float32 loss, and its checkpoint — high-precision weights, the usual
keys — loads in `nanolit_chat`. Midtraining inherits the base run's FP8 choice unless told."""
import sys

import pytest

from conftest import MID, TINY, base_dir_with_tokenizer, losses, meta, run, stage, weights

WARNING = 'warning: --fp8 1 needs FP8 tensor cores'
CONVERTED = 'fp8: converted 12/15 linear layers to Float8Linear (tensorwise, emulated)'


def tiny(*extra, steps=5):
    return [*TINY, '--num-iterations', str(steps), *extra]


def wide(*extra, steps=20):
    "TINY, but 128 wide (2 heads of 64): every linear of the blocks passes the FP8 filter (dims ≥ 128, multiples of 16)."
    return tiny('--aspect-ratio', '64', '--head-dim', '64', '--matrix-lr', '0.05', '--embedding-lr', '0.5', *extra,
                steps=steps)


@pytest.fixture(scope='module')
def bd(tmp_path_factory):
    return base_dir_with_tokenizer(tmp_path_factory, 'fp8')


def test_fp8_on_cpu_warns_once_and_trains_in_fp32(bd):
    plain = stage('nanolit.base_train', tiny('--model-tag', 'plain'), bd)
    flagged = stage('nanolit.base_train', tiny('--model-tag', 'flagged', '--fp8', '1'), bd)
    assert WARNING not in plain.stdout + plain.stderr
    assert (flagged.stdout + flagged.stderr).count(WARNING) == 1, flagged.stdout[-2000:]
    assert 'fp8: converted' not in flagged.stdout
    assert losses(bd, 'base_checkpoints', 'flagged') == losses(bd, 'base_checkpoints', 'plain')   # identical, not close
    assert meta(bd, 'base_checkpoints', 'flagged')['user_config']['fp8'] == 1


def test_emulated_fp8_trains_like_fp32_and_its_checkpoint_loads_anywhere(bd):
    stage('nanolit.base_train', wide('--model-tag', 'w32'), bd)
    res = stage('nanolit.base_train', wide('--model-tag', 'w8', '--fp8-emulate', '1'), bd)
    assert res.stdout.count(CONVERTED) == 1, res.stdout[-2000:]
    fp32, fp8 = losses(bd, 'base_checkpoints', 'w32'), losses(bd, 'base_checkpoints', 'w8')
    assert len(fp32) == len(fp8) == 20
    assert fp8 != fp32                                          # the FP8 numerics did run ...
    assert abs(fp8[-1] - fp32[-1]) <= 0.02 * fp32[-1], (fp8[-1], fp32[-1])   # ... and train as well
    m = meta(bd, 'base_checkpoints', 'w8')
    assert m['effective']['fp8_linears'] == 12 and m['user_config']['fp8_emulate'] == 1
    w8, w32 = weights(bd, 'base_checkpoints', 'w8'), weights(bd, 'base_checkpoints', 'w32')
    assert w8.keys() == w32.keys() and all(w8[k].dtype == w32[k].dtype for k in w8)
    chat = run([sys.executable, '-m', 'nanolit.chat', '--source', 'base', '--model-tag', 'w8', '--prompt', 'hello',
                '--max-tokens', '4'], {'NANOLIT_BASE_DIR': str(bd)})
    assert chat.returncode == 0, chat.stdout[-2000:] + chat.stderr[-2000:]
    assert 'fp8' not in chat.stdout + chat.stderr


def test_midtraining_inherits_the_fp8_choice_unless_told(bd):
    if not (bd / 'base_checkpoints' / 'w8').exists():
        stage('nanolit.base_train', wide('--model-tag', 'w8', '--fp8-emulate', '1', steps=2), bd)
    res = stage('nanolit.midtrain', [*MID, '--model-tag', 'w8', '--num-iterations', '1'], bd)
    assert '--fp8-emulate 1' in res.stdout and res.stdout.count(CONVERTED) == 1, res.stdout[-2000:]
    res = stage('nanolit.midtrain', [*MID, '--model-tag', 'w8', '--output-tag', 'w8-off', '--num-iterations', '1',
                                     '--fp8-emulate', '0'], bd)
    assert 'fp8: converted' not in res.stdout, res.stdout[-2000:]
