"""DiT and VAE of Minimax-SR's Stage 2 (diffusers models) and DiffFit fine-tuning as Minimax Diffusion does it.

Minimax-SR (Stage 2, Eq. 2-6) fine-tunes a class-conditioned latent DiT (Peebles & Xie, 2023) with DiffFit (Xie et
al., 2023) as Minimax Diffusion (Gu et al., CVPR 2024; ``mark_difffit_trainable`` in ``train_dit.py``) does: train the
parameters named ``bias``, ``norm``, ``gamma`` or ``y_embed``, and add scale factors gamma (vectors initialised to 1)
to the first half of the blocks. Models come from a local diffusers folder (never downloaded) or a config dict
(:data:`TINY_DIT_CONFIG`, :data:`TINY_VAE_CONFIG`).

Each gamma is a forward hook multiplying one diffusers submodule's output by a (d,) parameter ``difffit_gamma`` held
by that submodule (diffusers' code untouched, deepcopy-safe); with every gamma at 1 the output equals the plain DiT's
bit for bit. Sites (``gamma_sites``) and the reference parameter each reproduces: ``'qkv'``: ``attn1.to_q/k/v``
(``attn.gamma1``, 3d); ``'attn_proj'``: ``attn1.to_out[0]`` (``attn.gamma2``); ``'attn'``: ``attn1``, the attention
residual branch (``block.gamma1``); ``'ff'``: ``ff``, the MLP residual branch (``block.gamma2``).

Translations from the original DiT to diffusers (departures in names only, same trainable set):

* ``norm``: diffusers keeps the adaLN Linear and the embedders inside ``norm1``, so a literal name match would train
  their full weights; ``norm_match='module'`` (default) takes only parameters of ``*Norm*`` modules (none in DiT).
* class embedding: diffusers copies the timestep / label embedders into every block; ``tie_embeddings=True`` shares
  block 0's, so the label table is trained once as in the reference. ``state_dict()`` then repeats the shared tensor
  under every block's keys: save with ``torch.save`` or ``safe_serialization=False``; to load, call
  :func:`apply_difffit` with the same options first. Build an EMA after :func:`apply_difffit`.
* labels (the paper is silent): pseudo-class c is DiT label ``label_offset + c`` (:func:`pseudo_to_dit_labels`); the
  null label stays ``num_embeds_ada_norm``. Any injective map works, DiffFit re-learns the used rows.
* label dropout: diffusers drops labels in every block call, DiT once per sample; for DiT's behaviour call
  ``set_label_dropout(dit, 0)`` and :func:`drop_labels`.
"""
import os
import os.path as osp
import torch
from torch import nn

__all__ = [
    'TINY_DIT_CONFIG', 'TINY_VAE_CONFIG', 'GAMMA_SITES', 'build_dit', 'build_vae', 'vae_downsample_factor',
    'vae_encode', 'vae_decode', 'apply_difffit', 'difffit_parameter_names', 'gamma_parameter_names',
    'pseudo_to_dit_labels', 'null_label', 'set_label_dropout', 'drop_labels'
]

#: Tiny random DiT for the CPU demo: 8x8x4 latents (64x64 images through :data:`TINY_VAE_CONFIG`), patch 2 (16
#: tokens), 2 blocks of 2 heads x 16 dims, 7 pseudo-classes (null label 7). ``out_channels = 8`` mirrors the
#: pretrained DiT-XL/2 (learned sigma: channels 0-3 are epsilon, 4-7 the variance interpolation).
TINY_DIT_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=7,
    norm_type='ada_norm_zero',
    activation_fn='gelu-approximate')

#: Tiny random KL-VAE for the CPU demo: 4 encoder blocks (3 downsamplings), so the SD VAE's factor 8 is kept
#: (64x64x3 images <-> 8x8x4 latents, ``latent_size = image_size // 8`` as in the real pipeline); SD's scaling
#: factor 0.18215.
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4,
    up_block_types=['UpDecoderBlock2D'] * 4,
    block_out_channels=[8, 8, 16, 16],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.18215)

#: DiffFit gamma sites, see the module docstring; all four (the reference's set) by default.
GAMMA_SITES = ('qkv', 'attn_proj', 'attn', 'ff')

_GAMMA = 'difffit_gamma'
_DIFFFIT_ATTR = '_difffit_options'


def _resolve_dir(config_or_dir, subfolder, default_subfolder, option_name, what):
    """Local folder holding a diffusers ``config.json``; ``subfolder='auto'`` tries the folder, then the subfolder."""
    path = os.fspath(config_or_dir)
    if not osp.isdir(path):
        raise FileNotFoundError(f'{what} folder {path!r} (option {option_name!r}) does not exist; models are only '
                                f'loaded from local diffusers folders, never downloaded')
    if subfolder == 'auto':
        for sub in (None, default_subfolder):
            if osp.isfile(osp.join(path, *([sub] if sub else []), 'config.json')):
                return path, sub
        raise FileNotFoundError(f'{what} folder {path!r} (option {option_name!r}) has no config.json, neither at its '
                                f'top nor in {default_subfolder!r}/')
    if not osp.isfile(osp.join(path, *([subfolder] if subfolder else []), 'config.json')):
        raise FileNotFoundError(f'{what} folder {path!r} (option {option_name!r}) has no '
                                f'{osp.join(subfolder or "", "config.json")}')
    return path, subfolder


def _from_pretrained_strict(cls, path, sub, option_name, what, torch_dtype):
    """``cls.from_pretrained`` from a local folder; bad keys raise (diffusers only warns)."""
    where = osp.join(path, sub) if sub else path
    try:
        model, info = cls.from_pretrained(
            path, subfolder=sub, local_files_only=True, torch_dtype=torch_dtype, output_loading_info=True)
    except OSError as err:
        raise FileNotFoundError(f'{what} folder {where!r} (option {option_name!r}): cannot load its weights: '
                                f'{err}') from err
    problems = {k: list(info.get(k) or []) for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')}
    if any(problems.values()):
        detail = '; '.join(f'{len(v)} {k.replace("_", " ")} {v[:5]}' for k, v in problems.items() if v)
        raise RuntimeError(f'{what} folder {where!r} (option {option_name!r}): the weights do not fit its '
                           f'config.json ({detail})')
    return model


def build_dit(config_or_dir, subfolder='auto', torch_dtype=None, option_name='pretrained_dit'):
    """Build diffusers' :class:`~diffusers.DiTTransformer2DModel` from a local folder or a config dict.

    A dict gives random weights (global RNG) with every block's embedders equal to block 0's, as in converted
    checkpoints, so :func:`apply_difffit` can tie them.

    Args:
        config_or_dir (dict | str | os.PathLike): Config dict, or local folder (e.g. DiT-XL-2-256).
        subfolder (str | None): Subfolder holding ``config.json`` and the weights; ``'auto'`` (default) uses the
            folder itself if it has a ``config.json``, else ``transformer/``. Ignored for a dict.
        torch_dtype (torch.dtype | None): Dtype of the weights. Default: None (as saved).
        option_name (str): Option the folder came from, for error messages.

    Returns:
        DiTTransformer2DModel: Train mode for a dict, eval mode from a folder; all parameters trainable.

    Raises:
        FileNotFoundError: If the folder, its ``config.json`` or its weights are missing (naming ``option_name``).
        RuntimeError: If the weights do not fit the config (missing, unexpected or mismatched keys, listed).
    """
    from diffusers import DiTTransformer2DModel
    if isinstance(config_or_dir, dict):
        dit = DiTTransformer2DModel.from_config(dict(config_or_dir))
        with torch.no_grad():
            ref = dit.transformer_blocks[0].norm1.emb.state_dict()
            for block in dit.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(ref)
        return dit if torch_dtype is None else dit.to(torch_dtype)
    path, sub = _resolve_dir(config_or_dir, subfolder, 'transformer', option_name, 'DiT')
    return _from_pretrained_strict(DiTTransformer2DModel, path, sub, option_name, 'DiT', torch_dtype)


def build_vae(config_or_dir, subfolder='auto', torch_dtype=None, option_name='pretrained_vae'):
    """Build diffusers' :class:`~diffusers.AutoencoderKL` (the paper's SD VAE) from a local folder or a config dict.

    Arguments and errors as :func:`build_dit` (``subfolder='auto'`` trying ``vae/``). Freeze the VAE and use eval mode
    for Stage 2, as Minimax Diffusion does.
    """
    from diffusers import AutoencoderKL
    if isinstance(config_or_dir, dict):
        vae = AutoencoderKL.from_config(dict(config_or_dir))
        return vae if torch_dtype is None else vae.to(torch_dtype)
    path, sub = _resolve_dir(config_or_dir, subfolder, 'vae', option_name, 'VAE')
    return _from_pretrained_strict(AutoencoderKL, path, sub, option_name, 'VAE', torch_dtype)


def vae_downsample_factor(vae):
    """Spatial factor between images and latents: ``2 ** (len(block_out_channels) - 1)`` (8 for the SD VAE)."""
    return 2**(len(vae.config.block_out_channels) - 1)


def vae_encode(vae, img, sample=True, generator=None):
    """Scaled latents, as Minimax Diffusion: ``vae.encode(2 img - 1).latent_dist.sample() * scaling_factor``.

    Args:
        vae (AutoencoderKL): The VAE.
        img (Tensor): (B, 3, H, W) in [0, 1], H and W multiples of f = :func:`vae_downsample_factor`.
        sample (bool): Sample the posterior (reference; with ``generator``) or take its mode. Default: True.

    Returns:
        Tensor: (B, C_latent, H / f, W / f) scaled latents.
    """
    dist = vae.encode(img * 2 - 1).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    return z * vae.config.scaling_factor


def vae_decode(vae, latents):
    """Images from scaled (B, C_latent, h, w) latents: ``(vae.decode(latents / scaling_factor).sample + 1) / 2``.

    Returns:
        Tensor: (B, 3, h f, w f) images, about [0, 1], not clamped; differentiable.
    """
    return (vae.decode(latents / vae.config.scaling_factor).sample + 1) / 2


def _scale_output_hook(module, args, output):
    """Forward hook: output times the module's own ``difffit_gamma``."""
    return output * getattr(module, _GAMMA)


def _site_modules(block, site):
    attn = block.attn1
    if site == 'qkv':
        return [attn.to_q, attn.to_k, attn.to_v]
    if site == 'attn_proj':
        return [attn.to_out[0]]
    if site == 'attn':
        return [attn]
    if site == 'ff':
        return [block.ff]
    raise ValueError(f'Unknown DiffFit gamma site {site!r}; choose from {GAMMA_SITES}.')


def _out_features(block, site, module):
    if site == 'attn':
        return block.attn1.to_out[0].out_features
    if site == 'ff':
        return block.ff.net[-1].out_features
    return module.out_features


def _gamma_block_indices(gamma_blocks, num_blocks):
    if gamma_blocks == 'first_half':
        return list(range(num_blocks // 2))
    if gamma_blocks == 'all':
        return list(range(num_blocks))
    if isinstance(gamma_blocks, str):
        raise ValueError(f'gamma_blocks must be "first_half", "all" or block indices, got {gamma_blocks!r}.')
    idx = sorted(set(int(i) for i in gamma_blocks))
    if any(i < 0 or i >= num_blocks for i in idx):
        raise ValueError(f'gamma_blocks {list(gamma_blocks)} out of range for {num_blocks} blocks.')
    return idx


def _is_norm_module(module):
    return 'Norm' in type(module).__name__


def difffit_parameter_names(dit, norm_match='module'):
    """Names of the parameters DiffFit trains, in ``named_parameters()`` order (tied ones once).

    Selected: names containing ``bias`` or ``gamma``, the label table (``class_embedder.embedding_table``, the
    reference's ``y_embed``), and norm parameters (``norm_match='module'``: direct parameters of ``*Norm*`` modules;
    ``'name'``: any name containing ``norm``; another value: ValueError).
    """
    if norm_match not in ('module', 'name'):
        raise ValueError(f'norm_match must be "module" or "name", got {norm_match!r}.')
    norm_params = set()
    if norm_match == 'module':
        for module in dit.modules():
            if _is_norm_module(module):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    names = []
    for name, param in dit.named_parameters():
        hit = 'bias' in name or 'gamma' in name or 'class_embedder.embedding_table' in name
        hit = hit or (id(param) in norm_params if norm_match == 'module' else 'norm' in name)
        if hit:
            names.append(name)
    return names


def gamma_parameter_names(dit):
    """Names of the DiffFit gammas added by :func:`apply_difffit` (empty before)."""
    return [name for name, _ in dit.named_parameters() if name.endswith(_GAMMA)]


def _tie_embeddings(dit):
    blocks = dit.transformer_blocks
    ref = blocks[0].norm1.emb
    ref_state = ref.state_dict()
    for i, block in enumerate(blocks[1:], 1):
        emb = block.norm1.emb
        if emb is ref:
            continue
        state = emb.state_dict()
        if state.keys() != ref_state.keys() or any(not torch.equal(state[k], ref_state[k]) for k in state):
            raise ValueError(f'Block {i} has a timestep / label embedder different from block 0\'s, so tying them '
                             f'would change the model; use tie_embeddings=False (or build_dit from a config, which '
                             f'makes them equal).')
        emb_dropout, ref_dropout = emb.class_embedder.dropout_prob, ref.class_embedder.dropout_prob
        if emb_dropout != ref_dropout:
            raise ValueError(f'Block {i} drops labels with p={emb_dropout}, block 0 with p={ref_dropout}.')
    for block in blocks[1:]:
        block.norm1.emb = ref


def apply_difffit(dit, gamma_blocks='first_half', gamma_sites=GAMMA_SITES, tie_embeddings=True, norm_match='module'):
    """Turn a diffusers DiT into DiffFit's form in place: tie embedders, add gammas (at 1), train only DiffFit's set.

    The forward pass is unchanged while every gamma is 1.

    Args:
        dit (DiTTransformer2DModel): The DiT (``transformer_blocks`` with ``attn1`` and ``ff``); modified in place.
        gamma_blocks (str | Sequence[int]): ``'first_half'`` (default, the reference's), ``'all'``, or block indices.
        gamma_sites (Sequence[str]): Subset of :data:`GAMMA_SITES`. Default: all four.
        tie_embeddings (bool): Share block 0's ``norm1.emb`` in every block. Default: True.
        norm_match (str): Rule of :func:`difffit_parameter_names`. Default: ``'module'``.

    Returns:
        list[str]: Names of the trainable parameters.

    Raises:
        RuntimeError: If DiffFit was already applied to ``dit``.
        ValueError: On an unknown site or ``norm_match``, block indices out of range, or embedders that differ (cannot
            be tied).
    """
    if hasattr(dit, _DIFFFIT_ATTR):
        raise RuntimeError('apply_difffit was already applied to this DiT.')
    if norm_match not in ('module', 'name'):
        raise ValueError(f'norm_match must be "module" or "name", got {norm_match!r}.')
    blocks = dit.transformer_blocks
    indices = _gamma_block_indices(gamma_blocks, len(blocks))
    sites = list(dict.fromkeys(gamma_sites))
    for site in sites:
        _site_modules(blocks[0], site)  # validates the site name before anything changes
    if tie_embeddings:
        _tie_embeddings(dit)
    for i in indices:
        for site in sites:
            for module in _site_modules(blocks[i], site):
                ref = next(module.parameters())
                dim = _out_features(blocks[i], site, module)
                module.register_parameter(_GAMMA, nn.Parameter(torch.ones(dim, dtype=ref.dtype, device=ref.device)))
                module.register_forward_hook(_scale_output_hook)
    setattr(dit, _DIFFFIT_ATTR,
            dict(gamma_blocks=indices, gamma_sites=sites, tie_embeddings=tie_embeddings, norm_match=norm_match))
    names = difffit_parameter_names(dit, norm_match)
    trainable = set(names)
    for name, param in dit.named_parameters():
        param.requires_grad_(name in trainable)
    return names


def null_label(dit):
    """The classifier-free-guidance null label: ``num_embeds_ada_norm`` (1000 for ImageNet DiTs)."""
    return int(dit.config.num_embeds_ada_norm)


def pseudo_to_dit_labels(c, offset=0, num_labels=None, label_map=None):
    """DiT labels of pseudo-classes: ``offset + c``, or ``label_map[c]``.

    Args:
        c (int | Sequence[int] | Tensor): Pseudo-class indices, >= 0.
        offset (int): Label of pseudo-class 0. Default: 0.
        num_labels (int | None): If given, every label must be below it (never the null label). Default: None.
        label_map (Sequence[int] | None): Label per pseudo-class; replaces ``offset``. Default: None.

    Returns:
        Tensor: int64 labels, shape and device of ``c``.

    Raises:
        ValueError: On a negative index, an index beyond ``label_map``, or a label not below ``num_labels``.
    """
    c = torch.as_tensor(c).long()
    if c.numel() and int(c.min()) < 0:
        raise ValueError(f'Pseudo-classes must be >= 0, got {c.tolist()}.')
    if label_map is not None:
        table = torch.as_tensor(label_map, dtype=torch.long, device=c.device)
        if c.numel() and int(c.max()) >= len(table):
            raise ValueError(f'label_map has {len(table)} entries, got pseudo-class {int(c.max())}.')
        labels = table[c]
    else:
        labels = c + int(offset)
    if labels.numel() and num_labels is not None and (int(labels.max()) >= num_labels or int(labels.min()) < 0):
        raise ValueError(f'DiT labels must lie in [0, {num_labels}) ({num_labels} is the null label), got '
                         f'{labels.tolist()}.')
    return labels


def set_label_dropout(dit, prob):
    """Set the label-dropout probability ``prob`` in [0, 1] of every ``LabelEmbedding`` of a DiT (0 disables it).

    Raises:
        ValueError: If ``prob`` is outside [0, 1], or > 0 for a label table without a null row.
    """
    if not 0 <= prob <= 1:
        raise ValueError(f'prob must be in [0, 1], got {prob}.')
    for module in dit.modules():
        if type(module).__name__ == 'LabelEmbedding':
            if prob > 0 and module.embedding_table.num_embeddings <= module.num_classes:
                raise ValueError('The label table has no null row, so labels cannot be dropped.')
            module.dropout_prob = prob


def drop_labels(labels, null, prob=0.1, generator=None):
    """Replace each label by ``null`` with probability ``prob``, once per sample (DiT's training dropout).

    Args:
        labels (Tensor): (B,) int64 DiT labels.
        null (int): The null label (:func:`null_label`).
        prob (float): Drop probability in [0, 1] (else ValueError). Default: 0.1 (DiT's).
        generator (torch.Generator | None): Generator on ``labels``' device. Default: None.

    Returns:
        Tensor: (B,) labels, a new tensor.
    """
    if not 0 <= prob <= 1:
        raise ValueError(f'prob must be in [0, 1], got {prob}.')
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < prob
    return torch.where(drop, torch.full_like(labels, null), labels)
