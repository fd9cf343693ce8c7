"""Build README.md from nbs/index.ipynb, offline (nbdev_readme needs quarto, which these machines cannot install).

    python .ci/build_readme.py           # write README.md
    python .ci/build_readme.py --check   # exit 1 if README.md differs from what index.ipynb renders to

Markdown cells are copied as they are; code cells become ```python blocks with their `#|` directive lines removed,
followed by their text output; cells marked `#| hide` are left out.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK, README = ROOT / 'nbs' / 'index.ipynb', ROOT / 'README.md'
FOOTER = '<!-- Generated from nbs/index.ipynb by `python .ci/build_readme.py`: edit the notebook, not this file. -->\n'

def _text(src): return ''.join(src) if isinstance(src, list) else src

def _directives(code):
    return {line[3:].strip().split()[0] for line in code.splitlines() if line.startswith('#|') and line[3:].strip()}

def render(nb):
    parts = []
    for cell in nb['cells']:
        src = _text(cell['source']).strip('\n')
        if cell['cell_type'] == 'markdown':
            if src: parts.append(src)
            continue
        if cell['cell_type'] != 'code' or 'hide' in _directives(src): continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
        if code: parts.append(f'```python\n{code}\n```')
        for out in cell.get('outputs', []):
            text = _text(out.get('text', '')) or _text(out.get('data', {}).get('text/plain', ''))
            if text.strip(): parts.append(f'```\n{text.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n\n' + FOOTER

def main(argv):
    want = render(json.loads(NOTEBOOK.read_text(encoding='utf-8')))
    if '--check' in argv:
        have = README.read_text(encoding='utf-8') if README.exists() else ''
        if have != want:
            print('FAIL: README.md differs from nbs/index.ipynb; edit the notebook, then run `python .ci/build_readme.py`')
            return 1
        print('README.md matches nbs/index.ipynb')
        return 0
    README.write_text(want, encoding='utf-8')
    print(f'wrote {README.relative_to(ROOT)}')
    return 0

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
