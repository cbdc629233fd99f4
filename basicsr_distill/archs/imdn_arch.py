"""IMDN: Information Multi-distillation Network (Hui et al., ACM MM 2019), in the two layouts with public weights.

Both layouts share a 3x3 head conv, blocks with progressive channel splits (1/4 distilled, 3/4 refined), LeakyReLU
(slope 0.05), a 1x1 fusion conv with a local residual, and a single-conv pixel-shuffle upsampler. Original
checkpoints load with ``load_state_dict(raw, strict=True)``: a pre-hook renames their keys (:func:`imdn_key_map`).
"""
import re
import torch
from torch import nn as nn

from basicsr.utils.registry import ARCH_REGISTRY

_BLOCK_TYPES = ('imdb', 'imdb_ntire22')

_IMDB_LAYER_NAMES = {
    'c1': 'conv1',
    'c2': 'conv2',
    'c3': 'conv3',
    'c4': 'conv4',
    'c5': 'conv_fuse',
    'cca.conv_du.0': 'cca.conv_down',
    'cca.conv_du.2': 'cca.conv_up'
}

# Original layouts -> our names: (pattern matched against the whole key after stripping ``module.``, replacement
# given to ``re.sub``: a template string or a function of the match). Tried in order; the first match wins.
_KEY_RULES = (
    # Zheng222/IMDN (``IMDN_x4.pth``, saved from nn.DataParallel). Blocks are IMDB1..IMDB6 (1-based).
    (r'fea_conv\.(weight|bias)', r'conv_first.\1'),
    (r'IMDB(\d+)\.(c[1-5]|cca\.conv_du\.[02])\.(weight|bias)',
     lambda m: f'body.{int(m.group(1)) - 1}.{_IMDB_LAYER_NAMES[m.group(2)]}.{m.group(3)}'),
    (r'c\.0\.(weight|bias)', r'conv_aggregate.\1'),
    (r'LR_conv\.(weight|bias)', r'conv_after_body.\1'),
    (r'upsampler\.0\.(weight|bias)', r'upsample.0.\1'),
    # ofsoundof/NTIRE2022_ESR baseline (``imdn_baseline.pth``, KAIR layout). model.1 is a ShortcutBlock around
    # Sequential(IMDBlock x N, conv); KAIR wraps a conv followed by an activation in a Sequential (hence ``.0``).
    (r'model\.0\.(weight|bias)', r'conv_first.\1'),
    (r'model\.1\.sub\.(\d+)\.conv([1-3])\.0\.(weight|bias)', r'body.\1.conv\2.\3'),
    (r'model\.1\.sub\.(\d+)\.conv4\.(weight|bias)', r'body.\1.conv4.\2'),
    (r'model\.1\.sub\.(\d+)\.conv1x1\.(weight|bias)', r'body.\1.conv_fuse.\2'),
    (r'model\.1\.sub\.\d+\.(weight|bias)', r'conv_after_body.\1'),  # the plain conv that ends the body
    (r'model\.2\.(weight|bias)', r'upsample.0.\1'),
)


def imdn_key_map(key):
    """Map one key of an original IMDN checkpoint to :class:`IMDN`'s name; other keys are returned as they are.

    A leading ``module.`` (nn.DataParallel) is stripped. Key map (``i``: 0-based block, ``p``: ``weight`` or ``bias``,
    ``N``: ``num_block``)::

        ours                       Zheng222/IMDN (IMDN_x4.pth)    NTIRE 2022 baseline (imdn_baseline.pth)
        conv_first.p               fea_conv.p                     model.0.p
        body.{i}.conv1.p           IMDB{i+1}.c1.p                 model.1.sub.{i}.conv1.0.p
        body.{i}.conv2.p           IMDB{i+1}.c2.p                 model.1.sub.{i}.conv2.0.p
        body.{i}.conv3.p           IMDB{i+1}.c3.p                 model.1.sub.{i}.conv3.0.p
        body.{i}.conv4.p           IMDB{i+1}.c4.p                 model.1.sub.{i}.conv4.p
        body.{i}.cca.conv_down.p   IMDB{i+1}.cca.conv_du.0.p      (no CCA)
        body.{i}.cca.conv_up.p     IMDB{i+1}.cca.conv_du.2.p      (no CCA)
        body.{i}.conv_fuse.p       IMDB{i+1}.c5.p                 model.1.sub.{i}.conv1x1.p
        conv_aggregate.p           c.0.p                          (none)
        conv_after_body.p          LR_conv.p                      model.1.sub.{N}.p
        upsample.0.p               upsampler.0.p                  model.2.p

    Args:
        key (str): Key relative to the IMDN module, e.g. ``'module.IMDB1.c5.weight'``.

    Returns:
        str: The key in our layout, e.g. ``'body.0.conv_fuse.weight'``.
    """
    if key.startswith('module.'):
        key = key[len('module.'):]
    for pattern, replacement in _KEY_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(f'^{pattern}$', replacement, key)
    return key


def _imdn_load_state_dict_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                   error_msgs):
    """Rename the keys under ``prefix`` with :func:`imdn_key_map` (on load_state_dict's copy of the dict)."""
    for key in [k for k in state_dict.keys() if k.startswith(prefix)]:
        new_key = prefix + imdn_key_map(key[len(prefix):])
        if new_key != key:
            if new_key in state_dict:
                error_msgs.append(f'IMDN: key "{key}" maps to "{new_key}", which the state dict also holds.')
                continue
            state_dict[new_key] = state_dict.pop(key)


def stdv_channels(x):
    """Per-channel population standard deviation over (h, w): (n, c, h, w) -> (n, c, 1, 1)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention (CCA): ``x * sigmoid(up(relu(down(std + mean))))``, 1x1 convs reducing
    ``num_feat`` channels by ``reduction``.
    """

    def __init__(self, num_feat, reduction=16):
        super().__init__()
        self.conv_down = nn.Conv2d(num_feat, num_feat // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv_up = nn.Conv2d(num_feat // reduction, num_feat, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        """x (Tensor): shape (n, c, h, w) -> Tensor of the same shape."""
        stat = stdv_channels(x) + x.mean(dim=(2, 3), keepdim=True)
        return x * self.sigmoid(self.conv_up(self.relu(self.conv_down(stat))))


class IMDBlock(nn.Module):
    """Information multi-distillation block: three split steps and a last conv, concatenated, CCA, 1x1 fusion, residual.

    ``num_feat`` channels in and out; ``distill_rate`` of them distilled at each step; ``use_cca`` applies CCA
    (``cca_reduction``) before the fusion; LeakyReLU slope ``negative_slope``.
    """

    def __init__(self, num_feat=64, distill_rate=0.25, negative_slope=0.05, use_cca=True, cca_reduction=16):
        super().__init__()
        self.num_distilled = int(num_feat * distill_rate)
        self.num_remaining = num_feat - self.num_distilled
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(self.num_remaining, num_feat, 3, 1, 1)
        self.conv3 = nn.Conv2d(self.num_remaining, num_feat, 3, 1, 1)
        self.conv4 = nn.Conv2d(self.num_remaining, self.num_distilled, 3, 1, 1)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.cca = ContrastChannelAttention(self.num_distilled * 4, cca_reduction) if use_cca else nn.Identity()
        self.conv_fuse = nn.Conv2d(self.num_distilled * 4, num_feat, 1)

    def forward(self, x):
        """x (Tensor): shape (n, num_feat, h, w) -> Tensor of the same shape."""
        split = (self.num_distilled, self.num_remaining)
        distilled1, remaining = torch.split(self.act(self.conv1(x)), split, dim=1)
        distilled2, remaining = torch.split(self.act(self.conv2(remaining)), split, dim=1)
        distilled3, remaining = torch.split(self.act(self.conv3(remaining)), split, dim=1)
        distilled4 = self.conv4(remaining)
        out = torch.cat([distilled1, distilled2, distilled3, distilled4], dim=1)
        return self.conv_fuse(self.cca(out)) + x


@ARCH_REGISTRY.register()
class IMDN(nn.Module):
    """IMDN (Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation Network", 2019).

    Layouts (``block_type``):

    * ``'imdb'``: the paper's. Blocks with CCA; ``conv_aggregate`` (1x1 + LeakyReLU) fuses all blocks' outputs, then
      ``conv_after_body`` (3x3) and a global residual. Weights: ``IMDN_x4.pth`` (6 blocks).
    * ``'imdb_ntire22'``: the NTIRE 2022 efficient SR baseline (KAIR layout). Blocks without CCA, chained, then
      ``conv_after_body`` and a global residual. Weights: ``imdn_baseline.pth`` (8 blocks).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64.
        num_block (int | None): Number of blocks; None: 6 for ``'imdb'``, 8 for ``'imdb_ntire22'``. Default: None.
        upscale (int): Upsampling factor. Default: 4.
        block_type (str): ``'imdb'`` or ``'imdb_ntire22'``. Default: ``'imdb'``.
        distill_rate (float): Fraction of channels distilled at each step of a block. Default: 0.25.
        negative_slope (float): LeakyReLU negative slope. Default: 0.05.
        cca_reduction (int): Channel reduction of the CCA (``'imdb'`` only). Default: 16.

    Raises:
        ValueError: If ``block_type`` is unknown.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=None,
                 upscale=4,
                 block_type='imdb',
                 distill_rate=0.25,
                 negative_slope=0.05,
                 cca_reduction=16):
        super().__init__()
        if block_type not in _BLOCK_TYPES:
            raise ValueError(f'Unknown block_type "{block_type}"; expected one of {_BLOCK_TYPES}.')
        if num_block is None:
            num_block = 6 if block_type == 'imdb' else 8
        self.block_type = block_type
        self.num_feat = num_feat
        self.upscale = upscale

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        use_cca = block_type == 'imdb'
        self.body = nn.ModuleList([
            IMDBlock(num_feat, distill_rate, negative_slope, use_cca=use_cca, cca_reduction=cca_reduction)
            for _ in range(num_block)
        ])
        if block_type == 'imdb':
            self.conv_aggregate = nn.Conv2d(num_feat * num_block, num_feat, 1)
            self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))

        self._register_load_state_dict_pre_hook(_imdn_load_state_dict_pre_hook, with_module=True)

    def forward_features(self, x):
        """Deep features before the upsampler: (n, num_in_ch, h, w) RGB in [0, 1] -> (n, num_feat, h, w)."""
        feat = self.conv_first(x)
        out = feat
        if self.block_type == 'imdb':
            outs = []
            for block in self.body:
                out = block(out)
                outs.append(out)
            out = self.act(self.conv_aggregate(torch.cat(outs, dim=1)))
        else:
            for block in self.body:
                out = block(out)
        return self.conv_after_body(out) + feat

    def forward(self, x):
        """Super-resolve: (n, num_in_ch, h, w) RGB in [0, 1] -> (n, num_out_ch, h upscale, w upscale), not clamped."""
        return self.upsample(self.forward_features(x))
