"""Tests of the IMDN arch: strict loading of both public checkpoints, the key map, features and hooks."""
import numpy as np
import os.path as osp
import pytest
from collections import OrderedDict

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import torch
from conftest import DATA, SHARED, data_path
from torch import nn

from basicsr.archs import build_network
from basicsr.utils.matlab_functions import imresize
from basicsr_distill.archs.imdn_arch import IMDN, imdn_key_map
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.image_io import read_rgb

IMDN_X4 = osp.join(SHARED, 'weights', 'IMDN_x4.pth')  # no licence to bundle: tests with it need shared/
RFDN = osp.join(SHARED, 'weights', 'rfdn_baseline.pth')  # not bundled (only this test needs it)
IMDN_NTIRE22 = osp.join(DATA, 'weights', 'imdn_baseline.pth')  # bundled
needs_imdn_x4 = pytest.mark.needs_shared('weights/IMDN_x4.pth')

LAYOUTS = [pytest.param('imdb', IMDN_X4, 6, 715176, marks=needs_imdn_x4), ('imdb_ntire22', IMDN_NTIRE22, 8, 893936)]


def _raw(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _butterfly_crop(size=32):
    """The centre size x size crop of Set5 butterfly's bicubic x4 LR (HWC array and (1, 3, h, w) tensor), its HR."""
    lr = read_rgb(data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4', 'butterflyx4.png'))
    hr = read_rgb(data_path('data', 'val', 'Set5', 'HR', 'butterfly.png'))
    y, x = (lr.shape[0] - size) // 2, (lr.shape[1] - size) // 2
    lr = lr[y:y + size, x:x + size]
    return lr, torch.from_numpy(lr).permute(2, 0, 1)[None], hr[4 * y:4 * (y + size), 4 * x:4 * (x + size)]


def _psnr(a, b):
    return float(-10 * np.log10(((a - b)**2).mean()))


def test_built_by_basicsr_the_bundled_teacher_beats_bicubic():
    """BasicSR's builder makes the teacher of the option files; with the bundled checkpoint its x4 of a real LR crop
    is 7.3 dB closer to the HR than bicubic (RGB PSNR, measured: 28.55 dB against 21.23 dB)."""
    net = build_network({'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4})
    assert isinstance(net, IMDN) and len(net.body) == 8
    net = load_pretrained(net, IMDN_NTIRE22).eval()
    lr, lr_t, hr = _butterfly_crop()
    with torch.no_grad():
        sr = net(lr_t)
    assert sr.shape == (1, 3, 128, 128) and hr.shape == (128, 128, 3)
    sr = sr[0].clamp(0, 1).permute(1, 2, 0).numpy()
    assert _psnr(sr, hr) > _psnr(np.clip(imresize(lr, 4), 0, 1), hr) + 3


def test_unknown_block_type():
    with pytest.raises(ValueError, match='block_type'):
        IMDN(block_type='rfdb')


@pytest.mark.parametrize('block_type, num_block', [('imdb', 6), ('imdb_ntire22', 8)])
def test_forward_features_shape(block_type, num_block):
    net = IMDN(num_feat=16, block_type=block_type, cca_reduction=4).eval()
    assert len(net.body) == num_block
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        feat = net.forward_features(x)
        out = net(x)
        assert feat.shape == (2, 16, 12, 10)
        assert out.shape == (2, 3, 48, 40)
        assert torch.equal(out, net.upsample(feat))
    assert hasattr(net, 'conv_aggregate') == (block_type == 'imdb')
    assert isinstance(net.body[0].cca, nn.Identity) == (block_type == 'imdb_ntire22')


def test_forward_hook_on_named_layer():
    net = IMDN(num_feat=16, num_block=2, upscale=2, cca_reduction=4).eval()
    seen = {}
    layers = dict(net.named_modules())
    for name in ('body.1.conv_fuse', 'conv_after_body', 'body.0.cca'):
        layers[name].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    with torch.no_grad():
        net(torch.rand(1, 3, 8, 8))
    assert seen == {name: (1, 16, 8, 8) for name in ('body.1.conv_fuse', 'conv_after_body', 'body.0.cca')}


def test_key_map():
    assert imdn_key_map('module.fea_conv.weight') == 'conv_first.weight'
    assert imdn_key_map('module.IMDB1.c1.bias') == 'body.0.conv1.bias'
    assert imdn_key_map('module.IMDB6.c5.weight') == 'body.5.conv_fuse.weight'
    assert imdn_key_map('module.IMDB2.cca.conv_du.0.weight') == 'body.1.cca.conv_down.weight'
    assert imdn_key_map('module.IMDB2.cca.conv_du.2.bias') == 'body.1.cca.conv_up.bias'
    assert imdn_key_map('module.c.0.weight') == 'conv_aggregate.weight'
    assert imdn_key_map('module.LR_conv.weight') == 'conv_after_body.weight'
    assert imdn_key_map('module.upsampler.0.bias') == 'upsample.0.bias'
    assert imdn_key_map('model.0.weight') == 'conv_first.weight'
    assert imdn_key_map('model.1.sub.3.conv2.0.weight') == 'body.3.conv2.weight'
    assert imdn_key_map('model.1.sub.7.conv4.bias') == 'body.7.conv4.bias'
    assert imdn_key_map('model.1.sub.0.conv1x1.weight') == 'body.0.conv_fuse.weight'
    assert imdn_key_map('model.1.sub.8.weight') == 'conv_after_body.weight'
    assert imdn_key_map('model.2.bias') == 'upsample.0.bias'
    for key in IMDN(block_type='imdb').state_dict():  # our own names are left alone
        assert imdn_key_map(key) == key


@pytest.mark.parametrize('block_type, path, num_block, num_params', LAYOUTS)
def test_load_raw_checkpoint_strict(block_type, path, num_block, num_params):
    raw = _raw(path)
    keys_before = list(raw)
    net = IMDN(block_type=block_type)
    assert sum(p.numel() for p in net.parameters()) == num_params
    net.load_state_dict(raw, strict=True)
    assert list(raw) == keys_before  # the caller's dict is not renamed
    # every tensor of the checkpoint lands in the parameter named by the key map
    ours = net.state_dict()
    for key, value in raw.items():
        assert torch.equal(ours[imdn_key_map(key)], value)
    # our own names load back, also through load_pretrained
    IMDN(block_type=block_type).load_state_dict(ours, strict=True)
    net2 = load_pretrained(IMDN(block_type=block_type), path)
    assert all(torch.equal(v, ours[k]) for k, v in net2.state_dict().items())


@needs_imdn_x4
def test_load_as_submodule():
    """The pre-hook handles a parent prefix (e.g. a teacher inside a distillation model)."""
    parent = nn.Module()
    parent.teacher = IMDN()
    raw = _raw(IMDN_X4)
    parent.load_state_dict(OrderedDict((f'teacher.{k}', v) for k, v in raw.items()), strict=True)
    assert torch.equal(parent.teacher.conv_first.weight, raw['module.fea_conv.weight'])


@pytest.mark.parametrize('block_type, path', [
    pytest.param('imdb', RFDN, marks=pytest.mark.needs_shared('weights/rfdn_baseline.pth')), ('imdb', IMDN_NTIRE22),
    pytest.param('imdb_ntire22', IMDN_X4, marks=needs_imdn_x4)
])
def test_wrong_weights_fail(block_type, path):
    with pytest.raises(RuntimeError) as info:
        load_pretrained(IMDN(block_type=block_type), path)
    msg = str(info.value)
    assert path in msg
    assert 'Missing key(s)' in msg and 'Unexpected key(s)' in msg
    if path == RFDN:
        assert '"B1.' in msg and '"body.0.conv1.weight"' in msg


def test_missing_file(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_pretrained(IMDN(), path)


def test_param_key(tmp_path):
    src = IMDN(num_feat=16, num_block=2, cca_reduction=4)
    ema = IMDN(num_feat=16, num_block=2, cca_reduction=4)
    path = str(tmp_path / 'net_g.pth')
    torch.save({'params': src.state_dict(), 'params_ema': ema.state_dict()}, path)

    net = load_pretrained(IMDN(num_feat=16, num_block=2, cca_reduction=4), path)  # auto: params_ema first
    assert torch.equal(net.conv_first.weight, ema.conv_first.weight)
    net = load_pretrained(IMDN(num_feat=16, num_block=2, cca_reduction=4), path, param_key='params')
    assert torch.equal(net.conv_first.weight, src.conv_first.weight)
    with pytest.raises(ValueError, match='params_x'):
        load_pretrained(net, path, param_key='params_x')

    wrapped = nn.DataParallel(IMDN(num_feat=16, num_block=2, cca_reduction=4))
    torch.save({'params': OrderedDict((f'module.{k}', v) for k, v in src.state_dict().items())}, path)
    assert load_pretrained(wrapped, path) is wrapped
    assert torch.equal(wrapped.module.conv_first.weight, src.conv_first.weight)
