"""SRGAN generator (Ledig et al., CVPR 2017) in the layout of leftthomas/SRGAN (``srgan_netG_epoch_4_100.pth``, MIT).

Parameter names equal the checkpoint's keys (``F`` = ``num_feat``, ``B`` = ``num_block``; ``block1..block8`` for
the default B = 5; PReLUs have one shared slope)::

    block1                 conv 9x9 (3 -> F) + PReLU
    block2 .. block{B+1}   residual blocks: x + BN(conv(PReLU(BN(conv(x)))))
    block{B+2}             conv 3x3 + PReLU
    block{B+3}             log2(upscale) x [conv 3x3 (F -> 4F), pixel shuffle x2, PReLU], then conv 9x9 (F -> 3)
    output                 (tanh(block{B+3}(block1 + block{B+2})) + 1) / 2
"""
import math
import torch
from torch import nn as nn

from basicsr.utils.registry import ARCH_REGISTRY


class ResidualBlock(nn.Module):
    """SRGAN residual block ``x + bn2(conv2(prelu(bn1(conv1(x)))))``, 3x3 convs; ``num_feat`` channels in and out."""

    def __init__(self, num_feat):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(num_feat)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(num_feat)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class UpsampleBlock(nn.Module):
    """Conv 3x3 to ``4 * num_feat`` channels, pixel shuffle x2, PReLU: (n, F, h, w) -> (n, F, 2h, 2w)."""

    def __init__(self, num_feat):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.prelu = nn.PReLU()

    def forward(self, x):
        return self.prelu(self.pixel_shuffle(self.conv(x)))


@ARCH_REGISTRY.register()
class SRGANGenerator(nn.Module):
    """SRGAN generator: (n, num_in_ch, h, w) RGB in [0, 1] -> (n, num_out_ch, upscale h, upscale w) in [0, 1].

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Feature channels. Default: 64.
        num_block (int): Residual blocks. Default: 5 (the checkpoint's).
        upscale (int): Upsampling factor, a power of 2. Default: 4.

    Raises:
        ValueError: If ``upscale`` is not a power of 2 (>= 2) or ``num_block`` < 1.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=5, upscale=4):
        super().__init__()
        num_up = int(round(math.log2(upscale))) if upscale >= 2 else 0
        if num_up < 1 or 2**num_up != upscale:
            raise ValueError(f'SRGANGenerator needs upscale = 2, 4, 8, ..., got {upscale}.')
        if num_block < 1:
            raise ValueError(f'SRGANGenerator needs num_block >= 1, got {num_block}.')
        self.num_block = num_block
        self.upscale = upscale
        self.block1 = nn.Sequential(nn.Conv2d(num_in_ch, num_feat, 9, 1, 4), nn.PReLU())
        for i in range(num_block):
            self.add_module(f'block{i + 2}', ResidualBlock(num_feat))
        self.add_module(f'block{num_block + 2}', nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU()))
        self.add_module(
            f'block{num_block + 3}',
            nn.Sequential(*[UpsampleBlock(num_feat) for _ in range(num_up)], nn.Conv2d(num_feat, num_out_ch, 9, 1, 4)))

    def forward(self, x):
        feat = self.block1(x)
        body = feat
        for i in range(self.num_block + 1):
            body = getattr(self, f'block{i + 2}')(body)
        out = getattr(self, f'block{self.num_block + 3}')(feat + body)
        return (torch.tanh(out) + 1) / 2
