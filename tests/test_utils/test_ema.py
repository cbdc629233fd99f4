"""Tests of the EMA of trainable parameters: hand values with decay 0.5, copy_to, store / restore, state dicts."""
import copy
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision / diffusers)

# isort: split

import torch
from torch import nn

from basicsr_distill.utils.ema import EMA


def _net():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1., 2.]]))
        net.bias.fill_(4.)
    net.weight.requires_grad_(False)  # frozen (as outside the DiffFit set): no shadow
    return net


def test_update_by_hand_decay_half():
    net = _net()
    ema = EMA(net, decay=0.5)
    assert list(ema.shadow) == ['bias'] and ema.shadow['bias'].item() == 4  # starts at the current value
    with torch.no_grad():
        net.bias.fill_(8.)
    ema.update()
    assert ema.shadow['bias'].item() == 6  # 0.5 * 4 + 0.5 * 8
    with torch.no_grad():
        net.bias.fill_(0.)
    ema.update()
    assert ema.shadow['bias'].item() == 3  # 0.5 * 6 + 0.5 * 0
    assert ema.num_updates == 2
    assert net.bias.item() == 0  # update never writes the model


def test_default_decay_and_checks():
    ema = EMA(_net())
    assert ema.decay == 0.9999
    with pytest.raises(ValueError, match='decay'):
        EMA(_net(), decay=1.5)
    net = _net()
    net.bias.requires_grad_(False)
    with pytest.raises(ValueError, match='no trainable'):
        EMA(net)


def test_copy_to_other_module_store_restore():
    net = _net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.bias.fill_(8.)
    ema.update()
    target = copy.deepcopy(net)
    ema.copy_to(target)
    assert target.bias.item() == 6 and torch.equal(target.weight, net.weight)
    ema.store(net)
    ema.copy_to(net)
    assert net.bias.item() == 6
    ema.restore(net)
    assert net.bias.item() == 8
    with pytest.raises(RuntimeError, match='store'):
        ema.restore(net)
    with pytest.raises(KeyError, match='bias'):
        ema.copy_to(nn.Linear(2, 1, bias=False))


def test_parameter_list_positional():
    a, b = nn.Parameter(torch.tensor([1.])), nn.Parameter(torch.tensor([10.]))
    ema = EMA([a, b], decay=0.5)
    with torch.no_grad():
        a.fill_(3.)
        b.fill_(0.)
    ema.update()
    assert ema.shadow['0'].item() == 2 and ema.shadow['1'].item() == 5
    c, d = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    ema.copy_to([c, d])
    assert c.item() == 2 and d.item() == 5


def test_half_precision_shadow_is_float32():
    net = nn.Linear(2, 1).half()
    ema = EMA(net, decay=0.9999)
    assert ema.shadow['bias'].dtype == torch.float32
    ema.copy_to(net)
    assert net.bias.dtype == torch.float16


def test_state_dict_round_trip():
    net = _net()
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.bias.fill_(8.)
    ema.update()
    other = EMA(_net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.shadow['bias'].item() == 6 and other.decay == 0.5 and other.num_updates == 1
    with pytest.raises(KeyError, match='differ'):
        EMA(nn.Linear(2, 1)).load_state_dict(ema.state_dict())


def test_tracks_difffit_parameters_of_tiny_dit():
    from basicsr_distill.archs.dit_difffit_arch import TINY_DIT_CONFIG, apply_difffit, build_dit
    torch.manual_seed(0)
    dit = build_dit(TINY_DIT_CONFIG)
    names = apply_difffit(dit)
    ema = EMA(dit, decay=0.5)
    assert list(ema.shadow) == names
    gamma = dict(dit.named_parameters())['transformer_blocks.0.ff.difffit_gamma']
    with torch.no_grad():
        gamma.fill_(3.)
    ema.update()
    twin = copy.deepcopy(dit)
    ema.copy_to(twin)
    assert torch.equal(dict(twin.named_parameters())['transformer_blocks.0.ff.difffit_gamma'], torch.full((32, ), 2.))
