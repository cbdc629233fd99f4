#!/usr/bin/env python
"""Install with ``pip install -e .`` after torch==2.13.0 and basicsr==1.4.2 (see scripts/setup_env.sh)."""
from setuptools import find_packages, setup

exec(open('basicsr_distill/version.py').read())  # defines __version__

setup(
    name='basicsr_distill',
    version=__version__,  # noqa: F821
    description='Dataset distillation for image super-resolution (IDC, GSDD, Minimax diffusion) as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['basicsr_distill', 'basicsr_distill.*']),
    python_requires='>=3.10',
    install_requires=[
        'torch>=2.0',  # install torch==2.13.0 first: see requirements/constraints.txt
        'basicsr==1.4.2',  # install with --no-build-isolation after torch
        'numpy',
        'opencv-python<5',
        'pyyaml',
        'scikit-learn',
        'mmengine==0.10.7',
        'tqdm',
        'matplotlib',  # benchmark plots and sample grids
        'diffusers==0.42.1',  # Minimax-SR: DiT, AutoencoderKL, schedulers
        'transformers==5.23.0',  # Minimax-SR stage 1: CLIP image features from a local folder
    ],
    extras_require={
        'test': ['pytest'],
        'lint': ['flake8', 'isort', 'yapf']
    },  # lint: BasicSR's settings, setup.cfg
    license='Apache-2.0',
)
