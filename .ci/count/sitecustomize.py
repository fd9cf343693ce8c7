"""Counts the checks the notebooks run under `nbdev_test` (put on PYTHONPATH by .ci/test, with NANOLIT_COUNT_TESTS set
to a file): each call of a `fastcore.test` function (`test_eq`, `test_fail`, ...) appends one byte to that file, so
that worker processes need no shutdown hook and the count is the file's size. Calls made by another test function
(`test_eq_type` calls `test_eq`) count once. Plain `assert`s are not counted."""
import os

if os.environ.get('NANOLIT_COUNT_TESTS'):
    import functools
    import fastcore.test as _ft

    _path, _depth = os.environ['NANOLIT_COUNT_TESTS'], [0]

    def _counted(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if _depth[0] == 0:
                fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try: os.write(fd, b'.')
                finally: os.close(fd)
            _depth[0] += 1
            try: return f(*args, **kwargs)
            finally: _depth[0] -= 1
        return wrapper

    for _name in [n for n in dir(_ft) if n.startswith('test_')]:
        setattr(_ft, _name, _counted(getattr(_ft, _name)))
