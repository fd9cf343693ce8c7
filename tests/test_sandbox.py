"""The HumanEval sandbox against the programs it exists for: each is stopped or contained within its timeout, scored as
a failure, and the evaluator carries on (it starts a subprocess of its own afterwards). The kernel layers are tested
with the seat belt off, so that the audit hook cannot be what contains them."""
import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nanolit.eval import evaluate_task
from nanolit.humaneval import SANDBOX_UID_BASE, HumanEval, SandboxLimits, humaneval_program, run_sandboxed

FIX = Path(__file__).parent / 'fixtures'
L = SandboxLimits(timeout=3)

def evaluator_unharmed():
    res = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True, timeout=30)
    assert res.stdout == '42\n', res

def timed(program, limits=L, seat_belts=False):
    t0 = time.monotonic()
    r = run_sandboxed(program, limits, seat_belts)
    assert time.monotonic() - t0 < limits.timeout + 3, r   # finished within its timeout (plus clean-up)
    return r

def test_correct_and_wrong_solutions():
    assert timed('def f(x): return x + 1\nassert f(1) == 2').status == 'passed'
    r = timed('def f(x): return x - 1\nassert f(1) == 2')
    assert r.status == 'failed' and 'AssertionError' in r.stderr

def test_infinite_loop_times_out():
    r = timed('while True: pass', SandboxLimits(timeout=1))
    assert r.status == 'timeout' and not r.passed
    evaluator_unharmed()

@pytest.mark.skipif(os.geteuid() != 0, reason='a fork bomb is run only where its containment was verified (a root evaluator '
                    'gives the child a uid of its own); as another user it relies on a user namespace, checked by hand only')
def test_fork_bomb_is_capped_and_killed_with_its_group():
    bomb = 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n'
    r = timed(bomb, SandboxLimits(timeout=2, max_processes=16))
    assert r.status == 'timeout'
    evaluator_unharmed()

@pytest.mark.skipif(os.geteuid() != 0, reason='the per-run uid (and so this clean-up) is used only when the evaluator is root')
def test_setsid_escapee_is_killed_by_uid():
    r = timed('import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(600)\nprint(os.getuid())', SandboxLimits(timeout=2))
    assert r.status == 'passed' and int(r.stdout) >= SANDBOX_UID_BASE
    uid, left = int(r.stdout), None
    for _ in range(50):   # SIGKILL is delivered asynchronously: the escapee may take a moment to go
        left = [p for p in Path('/proc').glob('[0-9]*') if _uid_alive(p, uid)]
        if not left: break
        time.sleep(0.1)
    assert not left, f"processes of the sandbox's uid {uid} survived: {left}"

def _uid_alive(proc: Path, uid: int) -> bool:
    try: status = (proc / 'status').read_text()
    except OSError: return False
    fields = dict(l.split(':', 1) for l in status.splitlines() if ':' in l)
    return int(fields['Uid'].split()[0]) == uid and not fields['State'].strip().startswith(('Z', 'X'))

def test_ten_gigabyte_allocation_fails():
    r = timed('x = bytearray(10 * 10**9)\nx[-1] = 1')
    assert r.status == 'error' and 'MemoryError' in r.stderr
    evaluator_unharmed()

NOT_CONTAINED = ('no network namespace', 'could not make the filesystem read-only')   # the sandbox's one-line notes

def attacks(keep: Path) -> list[str]:
    "Programs that delete or overwrite `keep`, a file outside the sandbox's directory."
    return [f'import os\nos.remove({str(keep)!r})', f'open({str(keep)!r}, "w").write("pwned")',
            f'import shutil\nshutil.rmtree({str(keep.parent)!r})']

@pytest.mark.parametrize('seat_belts', [False, True])
def test_file_outside_the_directory_survives(seat_belts):
    with tempfile.TemporaryDirectory() as d:   # world-writable: file permissions alone would let any uid delete it
        keep = Path(d) / 'keep.txt'
        keep.write_text('mine'); keep.chmod(0o666); os.chmod(d, 0o777)
        for program in attacks(keep):
            r = timed(program, seat_belts=seat_belts)
            if not seat_belts and any(s in r.stderr for s in NOT_CONTAINED): pytest.skip(r.stderr.splitlines()[0])
            assert r.status == 'error' and keep.read_text() == 'mine', r
            assert ('seat belt' if seat_belts else 'Read-only file system') in r.stderr, r

NOBODY = 65534
EVALUATOR = r'''
import json, os, subprocess, sys
from pathlib import Path
try:   # this interpreter must be able to start itself as this uid, and import nanolit
    subprocess.run([sys.executable, '-I', '-S', '-c', 'pass'], check=True, capture_output=True, timeout=60)
    from nanolit.humaneval import SandboxLimits, run_sandboxed
except Exception as e: print(f'{sys.executable}: {type(e).__name__}: {e}', file=sys.stderr); sys.exit(3)
keep, L = Path(sys.argv[1]), SandboxLimits(timeout=3)
out = {'uid': os.getuid(), 'attacks': []}
for program in json.loads(sys.argv[2]):
    r = run_sandboxed(program, L, seat_belts=False)
    out['attacks'].append((r.status, r.stderr, keep.read_text() if keep.exists() else None))
out['own_directory'] = run_sandboxed("open('f', 'w').write('x')\nassert open('f').read() == 'x'", L, seat_belts=False).status
out['unharmed'] = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout
print(json.dumps(out))
'''

def as_unprivileged(argv: list[str]) -> list[str]:
    "`argv` as uid and gid 65534 with no supplementary groups when we are root; unchanged when we are not."
    return ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', *argv] if os.geteuid() == 0 else argv

def test_unprivileged_evaluator_keeps_its_files():
    """An evaluator that is not root (the test drops to uid 65534 when run as root): the program runs as the evaluator's own
    uid, which may delete the file, so only the read-only mount namespace stands in the way. The file must survive the
    attacks, each scored a failure; the program can still write its own directory, and the evaluator carries on."""
    if os.geteuid() == 0 and not shutil.which('setpriv'): pytest.skip('setpriv (util-linux) is needed to drop root for this test')
    with tempfile.TemporaryDirectory() as d:
        keep = Path(d) / 'keep.txt'
        keep.write_text('mine')
        if os.geteuid() == 0: os.chown(d, NOBODY, NOBODY); os.chown(keep, NOBODY, NOBODY)
        env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
               'PYTHONPATH': os.pathsep.join([str(Path(__file__).parents[1]), *site.getsitepackages()])}
        pythons = [p for p in (sys.executable, os.path.realpath(sys.executable), '/usr/bin/python3', '/usr/local/bin/python3')
                   if Path(p).exists()]
        refused = []
        for python in dict.fromkeys(pythons):   # the first interpreter that uid 65534 can run (a venv under /root may not be)
            res = subprocess.run(as_unprivileged([python, '-c', EVALUATOR, str(keep), json.dumps(attacks(keep))]), env=env,
                                 cwd='/', capture_output=True, text=True, timeout=120)
            if res.returncode != 3: break
            refused.append(res.stderr.strip())
        else: pytest.skip(f'no Python that uid {NOBODY} can run and that imports nanolit: {refused}')
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        notes = [l for _, err, _ in out['attacks'] for l in err.splitlines() if any(s in l for s in NOT_CONTAINED)]
        if notes: pytest.skip(f'the kernel refuses what containment needs here: {notes[0]}')
        assert out['uid'] != 0
        for (status, stderr, text), program in zip(out['attacks'], attacks(keep)):
            assert status == 'error' and text == 'mine' and 'Read-only file system' in stderr, (program, status, stderr)
        assert keep.read_text() == 'mine' and out['own_directory'] == 'passed' and out['unharmed'] == '42\n', out

def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv('NANOLIT_SANDBOX_SECRET', 'hunter2')
    r = timed("import os\nprint(os.environ.get('NANOLIT_SANDBOX_SECRET'))")
    assert r.status == 'passed' and r.stdout.strip() == 'None'

def test_working_directory_is_fresh_and_removed():
    r = timed("import os\nprint(os.getcwd()); print(sorted(os.listdir('.')))\nopen('scratch', 'w').write('x')")
    cwd, listing = r.stdout.splitlines()
    assert listing == "['program.py']" and not Path(cwd).exists()

def test_network_namespace_or_one_line_saying_why():
    with socket.socket() as srv:
        srv.bind(('127.0.0.1', 0)); srv.listen()
        port = srv.getsockname()[1]
        r = timed(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
    if 'no network namespace' in r.stderr: pytest.skip(r.stderr.splitlines()[0])
    assert r.status == 'error' and 'unreachable' in r.stderr, r

def test_humaneval_end_to_end_on_the_fixture():
    task = HumanEval(path=FIX / 'humaneval.jsonl')
    rows = task.rows
    def stub_model(conv):   # the reference for the first half (fenced, then raw), a wrong function for the rest
        i = int(conv['task_id'].split('/')[-1])
        if i < len(rows) // 2: return conv['messages'][-1]['content'] if i % 2 == 0 else rows[i]['canonical_solution']
        return f"Here you go:\n```python\ndef {conv['entry_point']}(*args):\n    return 0\n```\n"
    res = evaluate_task(task, stub_model)
    assert (res['correct'], res['problems']) == (len(rows) // 2, len(rows))
    for row in rows:   # every reference solution passes in the sandbox, in either shape
        assert run_sandboxed(humaneval_program(row, row['canonical_solution']), L).passed
