"""Packaging for nanolit: every field comes from settings.ini, the one place nbdev and pip both read."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _words(key): return cfg.get(key, '').split()

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
min_python = cfg['min_python']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    url=cfg['git_url'],
    license=lic[0],
    keywords=cfg['keywords'],
    classifiers=[
        'Development Status :: 3 - Alpha',
        f'License :: {lic[1]}',
        'Natural Language :: English',
        'Programming Language :: Python :: 3',
        f'Programming Language :: Python :: {min_python}',
    ],
    python_requires=f'>={min_python}',
    packages=setuptools.find_packages(include=['nanolit', 'nanolit.*']),
    include_package_data=True,
    package_data={'nanolit': ['assets/*']},
    install_requires=_words('requirements'),
    extras_require={key.removesuffix('_requirements'): _words(key) for key in cfg if key.endswith('_requirements')},
    entry_points={
        'console_scripts': _words('console_scripts'),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
