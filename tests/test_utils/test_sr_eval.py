"""Tests of evaluate_sr: published IMDN / bicubic numbers on Set5, LR matching, modcrop, grayscale, the CLI."""
import os.path as osp
import pytest
import runpy

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import cv2
import numpy as np
import torch
from conftest import DATA, SHARED, NearestUp, limited_threads
from torch import nn

from basicsr.utils.matlab_functions import imresize
from basicsr_distill.archs.imdn_arch import IMDN
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.sr_eval import evaluate_sr, find_lr_file

IMDN_X4 = osp.join(SHARED, 'weights', 'IMDN_x4.pth')  # no licence to bundle: its test needs shared/
IMDN_NTIRE22 = osp.join(DATA, 'weights', 'imdn_baseline.pth')
SET5_HR = osp.join(DATA, 'data', 'val', 'Set5', 'HR')
SET5_LR = osp.join(DATA, 'data', 'val', 'Set5', 'LR_bicubic', 'X4')
SCRIPT = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'scripts', 'evaluate.py')


class MatlabBicubic(nn.Module):
    """x4 bicubic upsampling with BasicSR's MATLAB-style imresize."""

    def __init__(self, scale=4):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.stack([imresize(img, self.scale) for img in x])


@pytest.fixture(scope='module', autouse=True)
def _threads():
    with limited_threads(2):
        yield


@pytest.mark.needs_shared('weights/IMDN_x4.pth')
def test_imdn_x4_set5_published_psnr():
    net = load_pretrained(IMDN(block_type='imdb'), IMDN_X4).train()
    result = evaluate_sr(net, SET5_HR, SET5_LR, scale=4)
    assert round(result['psnr'], 2) == 32.21  # IMDN paper, Table 3
    assert round(result['ssim'], 4) == 0.8948
    assert sorted(result['per_image']) == ['baby.png', 'bird.png', 'butterfly.png', 'head.png', 'woman.png']
    assert np.isclose(result['psnr'], np.mean([v['psnr'] for v in result['per_image'].values()]))
    assert net.training  # mode restored

    # LR made on the fly from the HR images: within a few thousandths of a dB of the MATLAB LR files
    on_the_fly = evaluate_sr(net, SET5_HR, None, scale=4)
    assert abs(on_the_fly['psnr'] - result['psnr']) < 0.02


def test_imdn_ntire22_set5_regression():
    net = load_pretrained(IMDN(block_type='imdb_ntire22'), IMDN_NTIRE22)
    result = evaluate_sr(net, SET5_HR, SET5_LR, scale=4)
    assert abs(result['psnr'] - 32.2468) < 0.01  # measured with this pipeline
    assert abs(result['ssim'] - 0.8959) < 0.001


def test_bicubic_set5_psnr():
    result = evaluate_sr(MatlabBicubic(), SET5_HR, SET5_LR, scale=4)
    assert round(result['psnr'], 2) == 28.43


def test_find_lr_file():
    names = ['babyx4.png', 'bird.png', 'head_x4.png', 'woman.bmp']
    assert find_lr_file('baby.png', names, 4) == 'babyx4.png'
    assert find_lr_file('bird.png', names, 4) == 'bird.png'
    assert find_lr_file('head.png', names, 4) == 'head_x4.png'
    assert find_lr_file('woman.png', names, 4) == 'woman.bmp'
    assert find_lr_file('baby.png', names, 2) is None
    assert find_lr_file('zebra.png', names, 4) is None


def test_modcrop_grayscale_and_matching(tmp_path):
    """Odd HR sizes are cropped to scale x LR, grayscale is replicated to 3 channels, names match."""
    rng = np.random.default_rng(0)
    hr_dir, lr_dir = tmp_path / 'HR', tmp_path / 'LR'
    hr_dir.mkdir()
    lr_dir.mkdir()
    lr_gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    lr_color = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    # HR = nearest x2 of the LR plus a border that modcrop removes: nearest upsampling is then exact
    hr_gray = np.pad(lr_gray.repeat(2, 0).repeat(2, 1), ((0, 1), (0, 1)), constant_values=7)
    hr_color = np.pad(lr_color.repeat(2, 0).repeat(2, 1), ((0, 1), (0, 0), (0, 0)), constant_values=9)
    cv2.imwrite(str(hr_dir / 'gray.png'), hr_gray)
    cv2.imwrite(str(lr_dir / 'grayx2.png'), lr_gray)
    cv2.imwrite(str(hr_dir / 'color.png'), hr_color)
    cv2.imwrite(str(lr_dir / 'color.png'), lr_color)

    result = evaluate_sr(NearestUp(2), str(hr_dir), str(lr_dir), scale=2, crop_border=0)
    assert result['per_image']['gray.png']['psnr'] == float('inf')
    assert result['per_image']['color.png']['psnr'] == float('inf')
    assert result['per_image']['color.png']['ssim'] == pytest.approx(1.0)

    # on the fly: LR made from the mod-cropped HR, so sizes fit
    result = evaluate_sr(NearestUp(2), str(hr_dir), None, scale=2)
    assert set(result['per_image']) == {'color.png', 'gray.png'}

    (lr_dir / 'grayx2.png').unlink()
    with pytest.raises(FileNotFoundError, match='gray.png'):
        evaluate_sr(NearestUp(2), str(hr_dir), str(lr_dir), scale=2)
    with pytest.raises(FileNotFoundError, match='missing_dir'):
        evaluate_sr(NearestUp(2), str(tmp_path / 'missing_dir'), scale=2)


@pytest.mark.needs_shared('weights/IMDN_x4.pth')
def test_cli(capsys):
    namespace = runpy.run_path(SCRIPT, run_name='evaluate')
    report = namespace['main']([
        '--arch', 'IMDN', '--arch-opt', 'block_type=imdb', '--weights', IMDN_X4, '--hr', SET5_HR, '--lr', SET5_LR,
        '--scale', '4', '--metrics', 'psnr', 'ssim', '--per-image'
    ])
    result = report['evaluation']['test_sets']['HR']  # the --hr test set is named after its folder
    assert round(result['psnr'], 2) == 32.21
    out = capsys.readouterr().out
    assert 'baby.png' in out and 'HR' in out and '32.2' in out


def test_bicubic_sr_is_basicsr_imresize():
    from basicsr.utils.matlab_functions import imresize
    from basicsr_distill.utils.sr_eval import BicubicSR
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    out = BicubicSR(4)(x)
    assert out.shape == (2, 3, 24, 20)
    assert torch.equal(out[1], imresize(x[1], 4))
