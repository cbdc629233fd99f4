"""The paper-scale option files build networks that load the published checkpoints strictly (no download).

Each published checkpoint is written down here as a compact spec, from its published architecture and the released
key names (not from the BasicSR class it is loaded into): every key with its shape, the entry that holds the state
dict (``params`` / ``params_ema``), the number of keys and the parameter count the papers give. A state dict of that
spec is loaded strictly into the network each option file builds (BasicSR's ``ARCH_REGISTRY`` through
``utils.checkpoint``); the three distillation files go through a checkpoint file and their own ``param_key``.

Checkpoints (released names):

- SwinIR-M classical x4, ``001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth`` (JingyunLiang/SwinIR), ``params``: 550
  keys, 11.9 M parameters; trained on 48 x 48 LR patches with 8 x 8 windows, so each shifted block holds an
  ``attn_mask`` buffer of (36, 64, 64) and every block a ``relative_position_index`` of (64, 64): the network must
  be built with ``img_size: 48`` (SwinIR issue 129), whatever size it runs on later.
- RRDBNet x4, 23 blocks: Real-ESRGAN's ``RealESRGAN_x4plus.pth`` (``params_ema``), BasicSR's converted ESRGAN /
  RRDB_PSNR x4 (``params``): 702 keys, 16,697,987 parameters.
- EDSR-M x4 (64 features, 16 blocks; BasicSR's conversion of EDSR-PyTorch's ``EDSR_baseline_x4``), ``params``: 74
  keys, 1,517,571 parameters; MSRResNet x4 (BasicSR's release), ``params``: 74 keys, 1,517,571 parameters.
- RCAN x4 (yulunzhang/RCAN ``RCAN_BIX4.pt``): 10 groups of 20 RCABs, 1634 keys with its two ``MeanShift``
  convolutions, 15.59 M parameters; BasicSR's key conversion drops the mean shifts (BasicSR's RCAN subtracts a
  constant mean) and renames the rest (1630 keys).
- DiT-XL/2 512 and the SD VAE (diffusers folders ``DiT-XL-2-512/transformer``, ``sd-vae-ft-mse``): no weights here, so
  their published ``config.json`` is built on the meta device and a handful of official parameter shapes are
  compared, with the shapes the Minimax-SR option file implies (512 HR crops, latents 4 x 64 x 64, k <= 1000 labels).
"""
import glob
import numpy as np
import os.path as osp
import pytest
import torch
from collections import OrderedDict
from conftest import REPO

from basicsr_distill.utils.checkpoint import build_network, load_network
from basicsr_distill.utils.options import read_option_file

OPTIONS = osp.join(REPO, 'options')


# ------------------------------------------------------------------------------------------------ checkpoint specs
def _conv(spec, name, cin, cout, k=3, bias=True):
    spec[f'{name}.weight'] = (cout, cin, k, k)
    if bias:
        spec[f'{name}.bias'] = (cout, )


def _vec(spec, name, n, keys=('weight', 'bias')):
    for key in keys:
        spec[f'{name}.{key}'] = (n, )


def swinir_m_x4_s48w8():
    """001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth: 6 RSTB x 6 Swin blocks, embed 180, 6 heads, window 8, MLP x2,
    1conv residual connection, pixel-shuffle up-sampler with 64 features, LR training patches 48 x 48."""
    dim, win, heads, lr_patch = 180, 8, 6, 48
    num_windows, tokens = (lr_patch // win)**2, win * win
    spec = OrderedDict()
    _conv(spec, 'conv_first', 3, dim)
    _vec(spec, 'patch_embed.norm', dim)
    for i in range(6):
        for j in range(6):
            block = f'layers.{i}.residual_group.blocks.{j}'
            if j % 2:  # shifted windows (shift 4) on odd blocks
                spec[f'{block}.attn_mask'] = (num_windows, tokens, tokens)
            _vec(spec, f'{block}.norm1', dim)
            spec[f'{block}.attn.relative_position_bias_table'] = ((2 * win - 1)**2, heads)
            spec[f'{block}.attn.relative_position_index'] = (tokens, tokens)
            spec[f'{block}.attn.qkv.weight'], spec[f'{block}.attn.qkv.bias'] = (3 * dim, dim), (3 * dim, )
            spec[f'{block}.attn.proj.weight'], spec[f'{block}.attn.proj.bias'] = (dim, dim), (dim, )
            _vec(spec, f'{block}.norm2', dim)
            spec[f'{block}.mlp.fc1.weight'], spec[f'{block}.mlp.fc1.bias'] = (2 * dim, dim), (2 * dim, )
            spec[f'{block}.mlp.fc2.weight'], spec[f'{block}.mlp.fc2.bias'] = (dim, 2 * dim), (dim, )
        _conv(spec, f'layers.{i}.conv', dim, dim)
    _vec(spec, 'norm', dim)
    _conv(spec, 'conv_after_body', dim, dim)
    _conv(spec, 'conv_before_upsample.0', dim, 64)
    _conv(spec, 'upsample.0', 64, 256)
    _conv(spec, 'upsample.2', 64, 256)
    _conv(spec, 'conv_last', 64, 3)
    return spec


def rrdbnet_x4(num_block=23, feat=64, grow=32):
    """ESRGAN / Real-ESRGAN RRDBNet x4 in BasicSR's names: 3 dense blocks of 5 convolutions per RRDB."""
    spec = OrderedDict()
    _conv(spec, 'conv_first', 3, feat)
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                _conv(spec, f'body.{b}.rdb{r}.conv{c}', feat + (c - 1) * grow, feat if c == 5 else grow)
    for name in ('conv_body', 'conv_up1', 'conv_up2', 'conv_hr'):
        _conv(spec, name, feat, feat)
    _conv(spec, 'conv_last', feat, 3)
    return spec


def edsr_m_x4():
    """EDSR-M x4 in BasicSR's names (EDSR-PyTorch's head.0 / body.i.body.{0,2} / body.16 / tail.0.{0,2} / tail.1)."""
    spec = OrderedDict()
    _conv(spec, 'conv_first', 3, 64)
    for i in range(16):
        _conv(spec, f'body.{i}.conv1', 64, 64)
        _conv(spec, f'body.{i}.conv2', 64, 64)
    _conv(spec, 'conv_after_body', 64, 64)
    _conv(spec, 'upsample.0', 64, 256)
    _conv(spec, 'upsample.2', 64, 256)
    _conv(spec, 'conv_last', 64, 3)
    return spec


def msrresnet_x4():
    """BasicSR's MSRResNet x4 release: 16 residual blocks without BN, two pixel-shuffle x2 convolutions."""
    spec = OrderedDict()
    _conv(spec, 'conv_first', 3, 64)
    for i in range(16):
        _conv(spec, f'body.{i}.conv1', 64, 64)
        _conv(spec, f'body.{i}.conv2', 64, 64)
    _conv(spec, 'upconv1', 64, 256)
    _conv(spec, 'upconv2', 64, 256)
    _conv(spec, 'conv_hr', 64, 64)
    _conv(spec, 'conv_last', 64, 3)
    return spec


def rcan_x4_official():
    """RCAN_BIX4.pt in its own names: MeanShift convs, head, 10 groups of 20 RCABs (conv, ReLU, conv, CALayer with
    a 64 -> 4 -> 64 squeeze), a group conv at body.g.body.20, body.10, the up-sampler tail."""
    spec = OrderedDict()
    _conv(spec, 'sub_mean', 3, 3, k=1)
    _conv(spec, 'add_mean', 3, 3, k=1)
    _conv(spec, 'head.0', 3, 64)
    for g in range(10):
        for b in range(20):
            rcab = f'body.{g}.body.{b}.body'
            _conv(spec, f'{rcab}.0', 64, 64)
            _conv(spec, f'{rcab}.2', 64, 64)
            _conv(spec, f'{rcab}.3.conv_du.0', 64, 4, k=1)
            _conv(spec, f'{rcab}.3.conv_du.2', 4, 64, k=1)
        _conv(spec, f'body.{g}.body.20', 64, 64)
    _conv(spec, 'body.10', 64, 64)
    _conv(spec, 'tail.0.0', 64, 256)
    _conv(spec, 'tail.0.2', 64, 256)
    _conv(spec, 'tail.1', 64, 3)
    return spec


def rcan_official_to_basicsr(spec):
    """Rename RCAN_BIX4.pt keys as BasicSR's model conversion does; the MeanShift convolutions are dropped."""
    out = OrderedDict()
    fixed = {
        'head.0': 'conv_first',
        'body.10': 'conv_after_body',
        'tail.0.0': 'upsample.0',
        'tail.0.2': 'upsample.2',
        'tail.1': 'conv_last'
    }
    for key, shape in spec.items():
        module, param = key.rsplit('.', 1)
        parts = module.split('.')
        if parts[0] in ('sub_mean', 'add_mean'):
            continue
        if module in fixed:
            module = fixed[module]
        elif len(parts) == 4 and parts[3] == '20':  # body.g.body.20: the group's last conv
            module = f'body.{parts[1]}.conv'
        elif 'conv_du' in parts:  # body.g.body.b.body.3.conv_du.i -> body.g.residual_group.b.rcab.3.attention.(i+1)
            module = f'body.{parts[1]}.residual_group.{parts[3]}.rcab.3.attention.{int(parts[7]) + 1}'
        else:  # body.g.body.b.body.i -> body.g.residual_group.b.rcab.i
            module = f'body.{parts[1]}.residual_group.{parts[3]}.rcab.{parts[5]}'
        out[f'{module}.{param}'] = shape
    return out


#: name -> (spec builder, entry of the released file, number of keys, parameter count (exact, or (low, high)))
CHECKPOINTS = {
    'swinir_m_x4_s48w8': (swinir_m_x4_s48w8, 'params', 550, (11.85e6, 11.95e6)),
    'realesrgan_x4plus': (rrdbnet_x4, 'params_ema', 702, 16697987),
    'esrgan_x4': (rrdbnet_x4, 'params', 702, 16697987),
    'edsr_m_x4': (edsr_m_x4, 'params', 74, 1517571),
    'msrresnet_x4': (msrresnet_x4, 'params', 74, 1517571),
    'rcan_x4': (lambda: rcan_official_to_basicsr(rcan_x4_official()), 'params', 1630, (15.58e6, 15.60e6)),
}

#: A few key shapes written down as the released files list them (checked against the spec builders).
SPOT_CHECKS = {
    'swinir_m_x4_s48w8': {
        'conv_first.weight': (180, 3, 3, 3),
        'layers.0.residual_group.blocks.0.attn.relative_position_bias_table': (225, 6),
        'layers.0.residual_group.blocks.0.attn.relative_position_index': (64, 64),
        'layers.0.residual_group.blocks.1.attn_mask': (36, 64, 64),
        'layers.5.residual_group.blocks.5.attn_mask': (36, 64, 64),
        'layers.3.residual_group.blocks.2.attn.qkv.weight': (540, 180),
        'layers.5.conv.weight': (180, 180, 3, 3),
        'upsample.2.weight': (256, 64, 3, 3),
        'conv_last.weight': (3, 64, 3, 3),
    },
    'realesrgan_x4plus': {
        'conv_first.weight': (64, 3, 3, 3),
        'body.0.rdb1.conv1.weight': (32, 64, 3, 3),
        'body.22.rdb3.conv5.weight': (64, 192, 3, 3),
        'conv_up2.weight': (64, 64, 3, 3),
        'conv_last.bias': (3, ),
    },
    'edsr_m_x4': {
        'body.15.conv2.weight': (64, 64, 3, 3),
        'upsample.0.weight': (256, 64, 3, 3)
    },
    'msrresnet_x4': {
        'upconv1.weight': (256, 64, 3, 3),
        'conv_hr.weight': (64, 64, 3, 3)
    },
    'rcan_x4': {
        'body.9.residual_group.19.rcab.3.attention.1.weight': (4, 64, 1, 1),
        'body.9.residual_group.19.rcab.3.attention.3.weight': (64, 4, 1, 1),
        'body.0.conv.weight': (64, 64, 3, 3),
    },
}


def _check_spec(name):
    builder, _, num_keys, num_params = CHECKPOINTS[name]
    spec = builder()
    assert len(spec) == num_keys
    count = sum(int(np.prod(shape)) for key, shape in spec.items() if not key.endswith(('attn_mask', '_index')))
    if isinstance(num_params, tuple):
        assert num_params[0] <= count <= num_params[1]
    else:
        assert count == num_params
    for key, shape in SPOT_CHECKS.get(name, {}).items():
        assert spec[key] == shape, key
    return spec


def spec_state_dict(name):
    """Zero tensors in the spec's shapes (index buffers as int64); their values do not matter for the load."""
    spec = _check_spec(name)
    return OrderedDict(
        (k, torch.zeros(s, dtype=torch.long if k.endswith('_index') else torch.float32)) for k, s in spec.items())


def test_rcan_official_spec_counts():
    official = rcan_x4_official()
    assert len(official) == 1634
    assert sum(int(np.prod(s)) for s in official.values()) == 15592355 + 24  # + the two MeanShift convs


def _load_strict(network_opt, name, scale=4):
    net = build_network(network_opt, scale)
    net.load_state_dict(spec_state_dict(name), strict=True)
    return net


def _write_checkpoint(tmp_path, name):
    path = tmp_path / f'{name}.pth'
    torch.save({CHECKPOINTS[name][1]: spec_state_dict(name)}, path)
    return str(path)


# ------------------------------------------------------------------------------------------------------------ IDC
def _swin_relative_position_index(win):
    """The Swin relative position index of a win x win window (Liu et al., 2021), written out in numpy."""
    coords = np.stack(np.meshgrid(np.arange(win), np.arange(win), indexing='ij')).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (win - 1)
    return rel[..., 0] * (2 * win - 1) + rel[..., 1]


def _swin_shift_mask(size, win):
    """The shifted-window attention mask (-100 between tokens of different regions) of a size x size map."""
    shift = win // 2
    labels = np.zeros((size, size))
    cuts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for n, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
        labels[h, w] = n
    windows = labels.reshape(size // win, win, size // win, win).transpose(0, 2, 1, 3).reshape(-1, win * win)
    return np.where(windows[:, None, :] != windows[:, :, None], -100., 0.)


def test_idc_div2k_teacher_loads_the_s48w8_checkpoint(tmp_path):
    opt = read_option_file(osp.join(OPTIONS, 'distill', 'idc_div2k.yml'))
    assert opt['network_t']['img_size'] == 48 and opt['network_t']['window_size'] == 8
    assert 's48w8' in opt['path']['pretrain_network_t'] and opt['path']['strict_load_t']
    net = load_network(
        opt['network_t'],
        _write_checkpoint(tmp_path, 'swinir_m_x4_s48w8'),
        param_key=opt['path']['param_key_t'],
        strict=opt['path']['strict_load_t'])
    assert sum(p.numel() for p in net.parameters()) == 11900199
    # a fresh network of these options has the released buffers (the load above overwrote them with zeros)
    fresh = build_network(opt['network_t']).state_dict()
    index, mask = _swin_relative_position_index(8), _swin_shift_mask(48, 8)
    for key, value in fresh.items():
        if key.endswith('relative_position_index'):
            np.testing.assert_array_equal(value.numpy(), index)
        elif key.endswith('attn_mask'):
            np.testing.assert_array_equal(value.numpy(), mask)
    # the features the IDC model taps exist, and a 64 x 64 LR patch (the option file's) runs through
    assert opt['distill']['feature_layer'] == 'conv_after_body' and hasattr(net, 'conv_after_body')
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 3, 256, 256)


def test_swinir_img_size_64_does_not_load_the_s48w8_checkpoint():
    opt = dict(read_option_file(osp.join(OPTIONS, 'distill', 'idc_div2k.yml'))['network_t'], img_size=64)
    with pytest.raises(RuntimeError, match=r'attn_mask.*\[36, 64, 64\].*\[64, 64, 64\]'):
        _load_strict(opt, 'swinir_m_x4_s48w8')


# ----------------------------------------------------------------------------------------------------------- GSDD
def test_gsdd_ost_generator_and_extractor_load_realesrgan_x4plus(tmp_path):
    opt = read_option_file(osp.join(OPTIONS, 'distill', 'gsdd_ost.yml'))
    path_opt = opt['path']
    assert path_opt['pretrain_network_g'] == 'experiments/pretrained_models/RealESRGAN_x4plus.pth'
    weights = _write_checkpoint(tmp_path, 'realesrgan_x4plus')
    for key in ('g', 'f'):
        net = load_network(
            opt[f'network_{key}'],
            weights,
            scale=opt['scale'],
            param_key=path_opt.get(f'param_key_{key}', 'auto'),
            strict=path_opt.get(f'strict_load_{key}', True))
        assert sum(p.numel() for p in net.parameters()) == 16697987
    assert opt['distill']['inversion']['feature_layer'] == 'conv_body' and hasattr(net, 'conv_body')
    with pytest.raises(ValueError, match='no key "params"'):  # the release holds params_ema only
        load_network(opt['network_g'], weights, param_key='params')


# -------------------------------------------------------------------------------------------------------- Minimax
#: diffusers' DiT-XL-2-512 transformer/config.json (Peebles & Xie's DiT-XL/2: 28 blocks, hidden 1152 = 16 heads x 72,
#: patch 2, learned sigma, 1000 ImageNet classes; latents 4 x 64 x 64 for 512 x 512 images).
DIT_XL_2_512 = {
    '_class_name': 'Transformer2DModel',
    'activation_fn': 'gelu-approximate',
    'attention_bias': True,
    'attention_head_dim': 72,
    'cross_attention_dim': None,
    'dropout': 0.0,
    'in_channels': 4,
    'norm_elementwise_affine': False,
    'norm_num_groups': 32,
    'norm_type': 'ada_norm_zero',
    'num_attention_heads': 16,
    'num_embeds_ada_norm': 1000,
    'num_layers': 28,
    'num_vector_embeds': None,
    'only_cross_attention': False,
    'out_channels': 8,
    'patch_size': 2,
    'sample_size': 64,
    'upcast_attention': False,
    'use_linear_projection': False
}
#: Shapes of the released DiT-XL-2-512 weights (diffusers names).
DIT_SHAPES = {
    'pos_embed.proj.weight': (1152, 4, 2, 2),
    'transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight': (1001, 1152),  # + the null label
    'transformer_blocks.0.norm1.emb.timestep_embedder.linear_1.weight': (1152, 256),
    'transformer_blocks.0.norm1.linear.weight': (6 * 1152, 1152),
    'transformer_blocks.27.attn1.to_q.weight': (1152, 1152),
    'transformer_blocks.27.attn1.to_out.0.weight': (1152, 1152),
    'transformer_blocks.27.ff.net.0.proj.weight': (4608, 1152),
    'transformer_blocks.27.ff.net.2.weight': (1152, 4608),
    'proj_out_1.weight': (2 * 1152, 1152),
    'proj_out_2.weight': (2 * 2 * 8, 1152),
}
#: stabilityai/sd-vae-ft-mse config.json (the SD 1.x KL-f8 autoencoder).
SD_VAE = {
    '_class_name': 'AutoencoderKL',
    'act_fn': 'silu',
    'block_out_channels': [128, 256, 512, 512],
    'down_block_types': ['DownEncoderBlock2D'] * 4,
    'in_channels': 3,
    'latent_channels': 4,
    'layers_per_block': 2,
    'norm_num_groups': 32,
    'out_channels': 3,
    'sample_size': 256,
    'up_block_types': ['UpDecoderBlock2D'] * 4
}
VAE_SHAPES = {
    'encoder.conv_in.weight': (128, 3, 3, 3),
    'encoder.down_blocks.1.resnets.0.conv_shortcut.weight': (256, 128, 1, 1),
    'encoder.mid_block.attentions.0.to_q.weight': (512, 512),
    'encoder.conv_out.weight': (8, 512, 3, 3),
    'quant_conv.weight': (8, 8, 1, 1),
    'post_quant_conv.weight': (4, 4, 1, 1),
    'decoder.conv_in.weight': (512, 4, 3, 3),
    'decoder.up_blocks.3.resnets.0.conv1.weight': (128, 256, 3, 3),
    'decoder.conv_out.weight': (3, 128, 3, 3),
}


def test_minimax_ost_dit_and_vae_configs_fit_the_options():
    pytest.importorskip('diffusers')
    from basicsr_distill.archs.dit_difffit_arch import build_dit, build_vae, null_label, vae_downsample_factor
    opt = read_option_file(osp.join(OPTIONS, 'distill', 'minimax_ost.yml'))
    distill = opt['distill']
    assert distill['dit']['pretrained'].endswith('DiT-XL-2-512') and distill['vae']['pretrained'].endswith(
        'sd-vae-ft-mse')
    with torch.device('meta'):
        dit = build_dit(dict(DIT_XL_2_512))
        vae = build_vae(dict(SD_VAE))
    dit_shapes = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    vae_shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert {k: dit_shapes.get(k) for k in DIT_SHAPES} == DIT_SHAPES
    assert {k: vae_shapes.get(k) for k in VAE_SHAPES} == VAE_SHAPES
    assert len(dit.transformer_blocks) == 28
    assert 'pos_embed.pos_embed' not in dit_shapes  # a fixed sin-cos table, not in the released weights
    assert abs(sum(v.numel() for v in vae.parameters()) - 83.65e6) < 0.01e6  # the SD VAE's 83.65 M
    # the options' shapes: 512 HR crops -> 64 x 64 latents (the DiT-XL-2-512 sample size), 4 latent channels in,
    # 2 x 4 out (epsilon and the learned variance: the model keeps the first 4), k pseudo-classes among 1000 labels
    factor = vae_downsample_factor(vae)
    assert factor == 8 and opt['datasets']['train']['gt_size'] // factor == DIT_XL_2_512['sample_size']
    assert DIT_XL_2_512['in_channels'] == SD_VAE['latent_channels']
    assert DIT_XL_2_512['out_channels'] == 2 * SD_VAE['latent_channels']
    assert distill['label_offset'] + distill['stage1']['k'] <= DIT_XL_2_512['num_embeds_ada_norm'] == null_label(dit)
    assert vae.config.scaling_factor == pytest.approx(0.18215)


# ----------------------------------------------------------------------------------------------------- downstream
#: Downstream x4 option files -> the release whose keys their network_g must load. The demo files (EDSR with 32
#: features and 4 blocks) have no released counterpart and are left out on purpose.
DOWNSTREAM = {
    'train/EDSR/train_EDSR_x4_full.yml': 'edsr_m_x4',
    'train/EDSR/train_EDSR_x4_distilled.yml': 'edsr_m_x4',
    'test/EDSR/test_EDSR_x4.yml': 'edsr_m_x4',
    'train/ESRGAN/train_ESRGAN_x4_full.yml': 'esrgan_x4',
    'train/ESRGAN/train_ESRGAN_x4_distilled.yml': 'esrgan_x4',
    'test/ESRGAN/test_ESRGAN_x4.yml': 'esrgan_x4',
    'train/RRDBNet/train_RRDBNet_PSNR_x4_full.yml': 'esrgan_x4',
    'train/RRDBNet/train_RRDBNet_PSNR_x4_distilled.yml': 'esrgan_x4',
    'test/RRDBNet/test_RRDBNet_PSNR_x4.yml': 'esrgan_x4',
    'train/MSRResNet/train_MSRResNet_x4_full.yml': 'msrresnet_x4',
    'train/MSRResNet/train_MSRResNet_x4_distilled.yml': 'msrresnet_x4',
    'test/MSRResNet/test_MSRResNet_x4.yml': 'msrresnet_x4',
    'train/RCAN/train_RCAN_x4_full.yml': 'rcan_x4',
    'train/RCAN/train_RCAN_x4_distilled.yml': 'rcan_x4',
    'test/RCAN/test_RCAN_x4.yml': 'rcan_x4',
    'train/SwinIR/train_SwinIR_x4_full.yml': 'swinir_m_x4_s48w8',
    'train/SwinIR/train_SwinIR_x4_distilled.yml': 'swinir_m_x4_s48w8',
    'test/SwinIR/test_SwinIR_x4.yml': 'swinir_m_x4_s48w8',
}
DEMO_FILES = ('train/EDSR/train_EDSR_x4_distilled_demo.yml', 'test/EDSR/test_EDSR_x4_demo.yml')


def test_every_downstream_x4_file_is_covered():
    found = {osp.relpath(p, OPTIONS) for p in glob.glob(osp.join(OPTIONS, '*', '*', '*_x4*.yml'))}
    assert found == set(DOWNSTREAM) | set(DEMO_FILES)


@pytest.mark.parametrize('rel', sorted(DOWNSTREAM))
def test_downstream_network_loads_the_release(rel, one_thread):
    opt = read_option_file(osp.join(OPTIONS, rel))
    assert opt['scale'] == 4
    _load_strict(opt['network_g'], DOWNSTREAM[rel], scale=opt['scale'])
    if 'network_d' in opt:  # ESRGAN's discriminator (no released weights): it builds and takes 128 x 128 crops
        net_d = build_network(opt['network_d'])
        with torch.no_grad():
            assert net_d(torch.rand(1, 3, 128, 128)).shape == (1, 1)
