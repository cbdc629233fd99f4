"""The compat layer: torchvision and BasicSR import after ``import basicsr_distill``; fixes are idempotent."""
import pytest
import subprocess
import sys
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill import compat


def test_torchvision_and_basicsr_import_in_a_fresh_interpreter():
    code = ('import basicsr_distill, torch, torchvision, basicsr\n'
            'import torchvision.transforms.functional_tensor as ft\n'
            'from basicsr.data.degradations import rgb_to_grayscale\n'
            'print(torchvision.__version__, basicsr.__version__, hasattr(torch.ops.torchvision, "nms"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == '1.4.2' and out[2] == 'True'


def test_apply_is_idempotent_and_fixes_are_noops_once_done():
    compat.apply()
    assert compat.fix_torchvision_ops() is False  # torchvision is imported: nothing more to do
    assert compat.fix_functional_tensor() is False  # the alias (or the real module) exists


def test_cpu_resume_fix_only_without_cuda():
    import basicsr.train
    if torch.cuda.is_available():
        assert basicsr.train.load_resume_state is not compat._load_resume_state_cpu
    else:
        assert basicsr.train.load_resume_state is compat._load_resume_state_cpu


def test_basicsr_never_archives_a_folder_holding_the_working_directory(tmp_path, monkeypatch):
    from basicsr.utils import make_exp_dirs
    repo = tmp_path / 'repo'
    (repo / 'experiments' / 'old').mkdir(parents=True)
    (repo / 'mine.txt').write_text('the user\'s')
    monkeypatch.chdir(repo)
    for root in (repo / 'experiments' / '..', tmp_path):  # name: '..' as BasicSR joins it; a parent of the cwd
        opt = {'is_train': True, 'path': {'experiments_root': str(root)}}
        with pytest.raises(ValueError, match='it holds the current working directory .* Nothing was moved'):
            make_exp_dirs(opt)
        assert sorted(p.name for p in tmp_path.iterdir()) == ['repo'] and (repo / 'mine.txt').is_file()
    opt = {'is_train': True, 'path': {'experiments_root': str(repo / 'experiments' / 'old')}}
    make_exp_dirs(opt)  # any other folder is archived as BasicSR does
    assert len([p for p in (repo / 'experiments').iterdir() if p.name.startswith('old_archived_')]) == 1
