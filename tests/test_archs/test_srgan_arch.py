"""Tests of the SRGAN generator: strict loading of leftthomas' checkpoint, wrong checkpoints, shapes, Set5 PSNR."""
import numpy as np
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import torch
from conftest import data_path, limited_threads

from basicsr.archs import build_network
from basicsr.utils.matlab_functions import imresize
from basicsr_distill.archs.srgan_arch import SRGANGenerator
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.image_io import read_rgb
from basicsr_distill.utils.sr_eval import evaluate_sr

SRGAN_WEIGHTS = ('weights', 'srgan_netG_epoch_4_100.pth')


@pytest.fixture(scope='module', autouse=True)
def _threads():
    with limited_threads(2):
        yield


def test_built_by_basicsr_the_checkpoint_beats_bicubic_on_a_real_crop():
    """Built from its option dict with the bundled checkpoint: x4 of the centre 32x32 of Set5 butterfly's LR is in
    [0, 1] and 5.2 dB closer to the HR than bicubic (RGB PSNR, measured: 26.39 dB against 21.23 dB)."""
    net = build_network({'type': 'SRGANGenerator'})
    assert isinstance(net, SRGANGenerator) and hasattr(net, 'block8') and not hasattr(net, 'block9')
    net = load_pretrained(net, data_path(*SRGAN_WEIGHTS)).eval()
    lr = read_rgb(data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4', 'butterflyx4.png'))
    hr = read_rgb(data_path('data', 'val', 'Set5', 'HR', 'butterfly.png'))
    y, x = (lr.shape[0] - 32) // 2, (lr.shape[1] - 32) // 2
    lr, hr = lr[y:y + 32, x:x + 32], hr[4 * y:4 * y + 128, 4 * x:4 * x + 128]
    with torch.no_grad():
        sr = net(torch.from_numpy(lr).permute(2, 0, 1)[None])
    assert sr.shape == (1, 3, 128, 128) and 0 <= sr.min() and sr.max() <= 1
    sr = sr[0].permute(1, 2, 0).numpy()

    def psnr(a):
        return float(-10 * np.log10(((a - hr)**2).mean()))

    assert psnr(sr) > psnr(np.clip(imresize(lr, 4), 0, 1)) + 3


def test_strict_load_same_keys():
    path = data_path(*SRGAN_WEIGHTS)
    raw = torch.load(path, map_location='cpu', weights_only=True)
    net = load_pretrained(SRGANGenerator(), path, strict=True)
    state = net.state_dict()
    # parameter names are the checkpoint's, in the same order (it predates BatchNorm's num_batches_tracked)
    assert [k for k in state if not k.endswith('num_batches_tracked')] == list(raw)
    assert all(torch.equal(state[k], raw[k]) for k in raw)
    assert sum(p.numel() for p in net.parameters()) == 734092


def test_wrong_checkpoint_lists_keys():
    with pytest.raises(RuntimeError) as err:
        load_pretrained(SRGANGenerator(), data_path('weights', 'imdn_baseline.pth'))
    msg = str(err.value)
    assert 'imdn_baseline.pth' in msg and 'SRGANGenerator' in msg
    assert 'Missing key(s)' in msg and '"block2.bn1.running_mean"' in msg
    assert 'Unexpected key(s)' in msg and '"model.0.weight"' in msg


def test_wrong_structure_fails():
    with pytest.raises(RuntimeError, match='block6'):  # one residual block too few
        load_pretrained(SRGANGenerator(num_block=4), data_path(*SRGAN_WEIGHTS))


@pytest.mark.parametrize('upscale', [2, 4, 8])
def test_output_shape_and_range(upscale):
    net = SRGANGenerator(num_feat=8, num_block=2, upscale=upscale).eval()
    assert hasattr(net, 'block5') and not hasattr(net, 'block6')
    with torch.no_grad():
        out = net(torch.rand(2, 3, 6, 5))
    assert out.shape == (2, 3, 6 * upscale, 5 * upscale)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize('kwargs', [{'upscale': 3}, {'upscale': 1}, {'num_block': 0}])
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        SRGANGenerator(**kwargs)


def test_pretrained_x4_shape():
    net = load_pretrained(SRGANGenerator(), data_path(*SRGAN_WEIGHTS)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 10, 12))
    assert out.shape == (1, 3, 40, 48)


def test_set5_x4_psnr():
    """Y-PSNR / SSIM on Set5 x4, measured with this pipeline.

    [0, 1] in, ``(tanh + 1) / 2`` out (leftthomas' convention): 30.6539 dB / 0.8642. The wrong conventions were
    measured too and are far off: reading the output as tanh in [-1, 1] gives 12.84 dB, feeding [-1, 1] inputs
    13.05 dB. Bicubic is 28.43 dB, IMDN 32.21 dB: a GAN generator sits between them.
    """
    net = load_pretrained(SRGANGenerator(), data_path(*SRGAN_WEIGHTS))
    result = evaluate_sr(
        net, data_path('data', 'val', 'Set5', 'HR'), data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4'), scale=4)
    assert abs(result['psnr'] - 30.6539) < 0.01
    assert abs(result['ssim'] - 0.8642) < 0.001
    assert abs(result['per_image']['butterfly.png']['psnr'] - 26.365) < 0.01
