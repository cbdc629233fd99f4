"""Randomly initialised ResNet18 feature extractor of Distribution Matching (Zhao & Bilen, WACV 2023), as GSDD uses it.

DM (and GSDD, Eq. 7-8) matches mean embeddings psi_theta(x) under networks re-drawn every iteration (theta ~ P_theta,
PyTorch's default initialisation) and never trained. As in the DM reference code (unlike torchvision): 3x3 stride-1
first conv, no max-pool, instance norm (``GroupNorm(C, C)``), bias-free convs, no classifier, and the embedding is
``avg_pool2d(out, 4)`` flattened, so its size grows with the input (:meth:`DMResNet18.embed_dim`).

Departure: weights are drawn from a given ``torch.Generator`` only (:meth:`DMResNet18.reset_parameters`), replacing
the reference's wall-clock seeding, so runs are reproducible and the global RNG is untouched.
"""
import math
import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY

_NORMS = ('instance', 'batch', 'none')


def _make_norm(norm, num_channels):
    """Norm layer by name: ``'instance'`` -> GroupNorm(C, C, affine), ``'batch'`` -> BatchNorm2d, ``'none'``."""
    if norm == 'instance':
        return nn.GroupNorm(num_channels, num_channels, affine=True)
    if norm == 'batch':
        return nn.BatchNorm2d(num_channels)
    return nn.Identity()


class DMBasicBlock(nn.Module):
    """ResNet BasicBlock ``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``, 3x3 bias-free convs; ``stride`` of
    ``conv1`` and the shortcut; ``norm`` as :class:`DMResNet18`.
    """

    def __init__(self, in_ch, out_ch, stride=1, norm='instance'):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = _make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = _make_norm(norm, out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _make_norm(norm, out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@ARCH_REGISTRY.register()
class DMResNet18(nn.Module):
    """ResNet18 embedding network of DM / GSDD.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_feat (int): Width of the first stage; stages have ``num_feat`` x (1, 2, 4, 8) channels. Default: 64.
        norm (str): ``'instance'`` (DM's), ``'batch'`` (embeddings then depend on the batch in train mode) or
            ``'none'``. Default: ``'instance'``.
        num_block (Sequence[int]): BasicBlocks per stage. Default: (2, 2, 2, 2).
        pool_size (int): Kernel and stride of the final ``avg_pool2d``. Default: 4.

    Raises:
        ValueError: If ``norm`` is unknown or ``num_block`` does not have 4 entries.
    """

    def __init__(self, num_in_ch=3, num_feat=64, norm='instance', num_block=(2, 2, 2, 2), pool_size=4):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f'DMResNet18: norm must be one of {_NORMS}, got {norm!r}.')
        if len(num_block) != 4:
            raise ValueError(f'DMResNet18: num_block needs 4 entries (one per stage), got {num_block}.')
        self.num_in_ch = num_in_ch
        self.num_feat = num_feat
        self.norm = norm
        self.pool_size = pool_size
        self.conv1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=False)
        self.norm1 = _make_norm(norm, num_feat)
        in_ch = num_feat
        for i, blocks in enumerate(num_block):
            out_ch = num_feat * 2**i
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(blocks):
                layer.append(DMBasicBlock(in_ch, out_ch, stride if j == 0 else 1, norm))
                in_ch = out_ch
            self.add_module(f'layer{i + 1}', nn.Sequential(*layer))
        self.num_out_feat = in_ch

    def embed_dim(self, height, width):
        """Embedding size D for (height, width) inputs: ``8 num_feat * floor(ceil(H/8)/p) * floor(ceil(W/8)/p)``."""
        return self.num_out_feat * (math.ceil(height / 8) // self.pool_size) * (math.ceil(width / 8) // self.pool_size)

    def forward(self, x):
        """Embed a batch of images.

        Args:
            x (Tensor): (n, num_in_ch, H, W), any range (GSDD feeds [0, 1] images after DSA); H and W at least
                ``8 (pool_size - 1) + 1``.

        Returns:
            Tensor: (n, D), ``D = self.embed_dim(H, W)``; each row depends on its own image only (except with
            ``'batch'`` norm in train mode).

        Raises:
            ValueError: If ``x`` is not 4-D with ``num_in_ch`` channels, or too small to give a non-empty embedding.
        """
        if x.ndim != 4 or x.shape[1] != self.num_in_ch:
            raise ValueError(f'DMResNet18 expects (n, {self.num_in_ch}, H, W) inputs, got {tuple(x.shape)}.')
        if self.embed_dim(x.shape[2], x.shape[3]) == 0:
            min_size = 8 * (self.pool_size - 1) + 1
            raise ValueError(f'DMResNet18: inputs of size {tuple(x.shape[2:])} are too small; height and width must '
                             f'be >= {min_size} (ceil(size / 8) >= pool_size={self.pool_size}).')
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, self.pool_size)
        return out.flatten(1)

    def embed(self, x):
        """Same as :meth:`forward` (the reference's name)."""
        return self.forward(x)

    @torch.no_grad()
    def reset_parameters(self, generator):
        """Re-draw every parameter from ``generator`` (advanced) only, as PyTorch's default init; returns ``self``.

        Convs ``kaiming_uniform_(w, a=sqrt(5))``; norms weight 1, bias 0, BatchNorm statistics reset. Drawn on
        ``generator.device`` and copied, so the network's device does not change the values; works after ``to_empty``.

        Raises:
            TypeError: If ``generator`` is not a ``torch.Generator``, or a module with parameters has no known
                initialisation (a conv with bias included).
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f'reset_parameters needs a torch.Generator, got {type(generator).__name__}.')
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                weight = torch.empty(module.weight.shape, dtype=module.weight.dtype, device=generator.device)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                module.weight.copy_(weight)
                if module.bias is not None:
                    raise TypeError(f'DMResNet18.reset_parameters: conv "{name}" has a bias, which is not handled.')
            elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
                if module.weight is not None:
                    module.weight.fill_(1)
                    module.bias.zero_()
                if isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
            elif any(True for _ in module.parameters(recurse=False)):
                raise TypeError(f'DMResNet18.reset_parameters: cannot initialise "{name}" ({type(module).__name__}).')
        return self


def sample_dm_network(generator, device=None, **opts):
    """A fresh :class:`DMResNet18` (``**opts``) drawn from ``generator`` only, on ``device`` (None: the generator's).

    Built on the ``meta`` device, so the global RNG is never touched and a generator state gives the same network on any
    device. Returned frozen (``requires_grad=False``) in eval mode; with ``norm='batch'`` call ``net.train()`` to embed
    with batch statistics as DM does.
    """
    device = generator.device if device is None else torch.device(device)
    with torch.device('meta'):
        net = DMResNet18(**opts)
    net = net.to_empty(device=device).reset_parameters(generator)
    net.requires_grad_(False)
    return net.eval()
