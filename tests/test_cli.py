"""The console scripts as installed: they run and exit 0 (a console script's `sys.exit(main())` fails on any
non-None return value, which a test calling `main()` in-process would never notice)."""
import shutil
import sys
from pathlib import Path

from conftest import run

BIN = Path(sys.executable).parent

def script(name):
    path = BIN / name
    assert path.exists() or shutil.which(name), f"console script {name} is not installed (pip install -e .)"
    return str(path if path.exists() else shutil.which(name))

def test_console_scripts_exit_zero(tmp_path):
    env = {'NANOLIT_BASE_DIR': str(tmp_path / 'nanolit')}
    res = run([script('nanolit_tok_train'), '--vocab-size', '300', '--max-chars', '200000'], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'held-out bytes/token' in res.stdout and res.stderr.strip() == '', res.stderr
    for name in ('nanolit_data', 'nanolit_base_train', 'nanolit_midtrain', 'nanolit_sft', 'nanolit_eval', 'nanolit_chat',
                 'nanolit_speedrun'):
        res = run([script(name), '--help'], env)
        assert res.returncode == 0 and 'usage:' in res.stdout, (name, res.stderr)
