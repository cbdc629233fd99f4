"""Tests of DM's random ResNet18 extractor: embedding size, no batch statistics, seeded (re)initialisation."""
import math
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import torch
from conftest import data_path, limited_threads
from torch import nn

from basicsr.archs import build_network
from basicsr_distill.archs.dm_resnet_arch import DMResNet18, sample_dm_network
from basicsr_distill.utils.image_io import read_rgb


@pytest.fixture(scope='module', autouse=True)
def _threads():
    with limited_threads(1):
        yield


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_built_by_basicsr_embeds_real_patches_invariant_to_contrast():
    """Built from its option dict; every conv is bias-free and each is followed by a per-channel (instance) norm, so
    scaling the input by a > 0 leaves the embedding unchanged up to the norm's eps (measured: 1e-3 of its largest
    value), while a brightness shift does change it (measured: 9e-2)."""
    net = build_network({'type': 'DMResNet18', 'num_feat': 4}).eval()
    assert isinstance(net, DMResNet18) and net.norm == 'instance'
    img = torch.from_numpy(read_rgb(data_path('data', 'val', 'Set5', 'HR', 'butterfly.png'))).permute(2, 0, 1)
    x = torch.stack([img[:, :32, :32], img[:, 100:132, 100:132]])  # two real 32x32 patches
    with torch.no_grad():
        out, scaled, shifted = net(x), net(0.5 * x), net(x + 0.1)
    assert out.shape == (2, 32) == (2, net.embed_dim(32, 32))  # 8 * num_feat channels, one 4x4 pooling cell
    assert not torch.allclose(out[0], out[1], atol=1e-2)
    top = out.abs().max()
    assert (scaled - out).abs().max() < 1e-2 * top
    assert (shifted - out).abs().max() > 2e-2 * top


def test_layout():
    net = DMResNet18()
    assert sum(p.numel() for p in net.parameters()) == 11168832  # torchvision's resnet18 minus fc / 7x7 stem
    assert isinstance(net.norm1, nn.GroupNorm) and net.norm1.num_groups == net.norm1.num_channels == 64
    assert net.norm1.affine
    assert [net.layer1[0].conv1.stride, net.layer2[0].conv1.stride] == [(1, 1), (2, 2)]
    assert isinstance(net.layer1[0].shortcut, nn.Identity) and isinstance(net.layer2[0].shortcut, nn.Sequential)
    assert net.layer4[1].conv2.out_channels == 512 and net.conv1.kernel_size == (3, 3)
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, (nn.MaxPool2d, nn.Linear)) for m in net.modules())


@pytest.mark.parametrize('size, factor', [((32, 32), 1), ((64, 64), 4), ((40, 56), 1), ((25, 31), 1), ((64, 96), 6)])
def test_embedding_size(size, factor):
    net = DMResNet18(num_feat=4).eval()
    assert net.embed_dim(*size) == 32 * factor
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(net.embed(x), out)
    assert out.shape == (2, 32 * factor)


def test_too_small_or_wrong_channels():
    net = DMResNet18(num_feat=4)
    with pytest.raises(ValueError, match='too small'):
        net(torch.rand(1, 3, 24, 64))
    with pytest.raises(ValueError, match='inputs'):
        net(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize('norm', ['instance', 'none', 'batch'])
def test_batch_equals_concatenated_chunks(norm):
    net = sample_dm_network(_gen(0), num_feat=8, norm=norm)  # eval mode: BatchNorm uses running statistics
    x = torch.rand(6, 3, 32, 32, generator=_gen(1))
    with torch.no_grad():
        whole = net(x)
        chunks = torch.cat([net(x[:1]), net(x[1:4]), net(x[4:])])
    assert torch.allclose(whole, chunks, atol=1e-6, rtol=1e-5)
    if norm == 'instance':  # no batch statistics even in train mode
        with torch.no_grad():
            assert torch.allclose(net.train()(x), chunks, atol=1e-6, rtol=1e-5)


def test_same_as_pytorch_default_init():
    """A net drawn from Generator().manual_seed(s) equals one built with PyTorch's default init after manual_seed(s)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        default = DMResNet18(num_feat=8, norm='batch')
    drawn = sample_dm_network(_gen(3), num_feat=8, norm='batch')
    assert _states_equal(default, drawn)
    conv = drawn.layer3[0].conv1.weight
    assert conv.abs().max() <= 1 / math.sqrt(conv[0].numel())
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight)) for m in drawn.modules() if isinstance(m, nn.BatchNorm2d))


def test_reset_parameters_seeded_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = sample_dm_network(_gen(5), num_feat=8)  # built on the meta device: no global draws at all
    assert torch.equal(torch.get_rng_state(), state)
    net = DMResNet18(num_feat=8, norm='instance')  # default init draws from the global RNG...
    state = torch.get_rng_state()
    gen = _gen(5)
    assert net.reset_parameters(gen) is net
    assert torch.equal(torch.get_rng_state(), state)  # ...reset_parameters does not
    assert _states_equal(a, net)
    net.reset_parameters(gen)  # the generator advanced: a new network
    assert not torch.equal(a.conv1.weight, net.conv1.weight)
    assert not torch.equal(a.conv1.weight, sample_dm_network(_gen(6), num_feat=8).conv1.weight)
    with pytest.raises(TypeError):
        net.reset_parameters(5)


def test_sample_is_frozen_eval_and_passes_gradients():
    net = sample_dm_network(_gen(0), device='cpu', num_feat=8)
    assert isinstance(net, DMResNet18) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert all(torch.isfinite(t).all() for t in net.state_dict().values())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    net(x).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_invalid_options():
    with pytest.raises(ValueError, match='norm'):
        DMResNet18(norm='layer')
    with pytest.raises(ValueError, match='num_block'):
        DMResNet18(num_block=(2, 2, 2))
