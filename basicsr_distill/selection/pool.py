"""A subset of an option file's real patch pool, chosen by a coreset / pruning baseline and written as a distilled set
(:func:`select_subset`; ``scripts/select_subset.py``).

The pool is the one the option file's ``datasets.train`` defines (as :class:`SRInstanceDataset` cuts it), so the
subset is comparable with the distilled set. Methods (:data:`METHODS`):

* ``random``: uniform, seeded;
* ``herding``, ``kcenter``: on pooled features of the LR patches, from the teacher ``network_t``
(``features='teacher'``,
  layer ``distill.feature_layer``) or a seeded random DM ResNet18 (``features='random'``);
* ``dcsr``: Sobel complexity above the median, k-means (``num_clusters``) on texture descriptors, even sampling;
* ``psnr_bic``: a seeded uniform draw among the patches below the median PSNR_bic; ``psnr_bic_lowest``: the lowest
  PSNR_bic first.

Controls (:data:`CONTROLS`; HR = clamp(net(LR), 0, 1) with ``network_up`` if given, else ``network_t``, as IDC):

* ``random_teacher_hr``: the LR patches of ``random`` (same seed, same names), HR by the network;
* ``idc_init``: IDC's initial x_hat before any step (drawn as ``IDCModel`` draws it), at IDC's size
  n = max(1, round(r N)) per image; with ``like`` an IDC set, the options of that run;
* ``random_generator_hr`` (GSDD's): HR = clamp(G(LR), 0, 1) with GSDD's ``network_g``, LR = bicubic x 1/scale of
  that HR, as ``GSDDModel`` writes a pair.

See docs/Methods_IDC.md and docs/Methods_GSDD.md for what each control isolates.
"""
import math
import numbers
import numpy as np
import os
import os.path as osp
import time
import torch

from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
from basicsr_distill.data.sr_patches import bicubic_lr
from basicsr_distill.distilled_set import DistilledSetWriter, read_manifest
from basicsr_distill.ops.psnr_bic import psnr_bic_batch, select_lowest_psnr_bic
from basicsr_distill.selection.common import check_num_select
from basicsr_distill.selection.dcsr import select_dcsr_from_descriptors, texture_complexity, texture_features
from basicsr_distill.selection.features import patch_features, random_feature_network
from basicsr_distill.selection.herding import select_herding
from basicsr_distill.selection.kcenter import select_kcenter
from basicsr_distill.selection.psnr_bic_selection import select_psnr_bic_threshold
from basicsr_distill.selection.random_selection import select_random
from basicsr_distill.utils.checkpoint import load_frozen_network
from basicsr_distill.utils.options import read_option_file

CONTROLS = ('random_teacher_hr', 'idc_init', 'random_generator_hr')
METHODS = ('random', 'herding', 'kcenter', 'dcsr', 'psnr_bic', 'psnr_bic_lowest') + CONTROLS
FEATURE_METHODS = ('herding', 'kcenter')
RANDOM_FEATURE_WIDTH = 64


def load_teacher(opt, device):
    """The option file's ``network_t`` with ``path.pretrain_network_t``, frozen on ``device``.

    Returns:
        tuple: ``(net, path)``: the network in eval mode without gradients and its weights file.

    Raises:
        ValueError: ``network_t`` or ``path.pretrain_network_t`` is missing.
        KeyError, FileNotFoundError, ValueError, RuntimeError: As ``utils.checkpoint.load_frozen_network``.
    """
    path = (opt.get('path') or {}).get('pretrain_network_t')
    if not opt.get('network_t') or not path:
        raise ValueError('--features teacher needs network_t and path.pretrain_network_t in the option file; use '
                         '--features random otherwise')
    net = load_frozen_network(opt, 't', device)
    return net, path


def load_hr_network(opt, device, method='random_teacher_hr'):
    """The frozen network that makes a control's HR side: ``network_g`` for ``random_generator_hr``, else ``network_up``
    when given (no fallback), else ``network_t``.

    Returns:
        tuple: ``(net, key)``: the network on ``device`` and its key ``'g'``, ``'up'`` or ``'t'``.

    Raises:
        ValueError: The network chosen or its ``path.pretrain_network_<key>`` is missing.
        KeyError, FileNotFoundError, ValueError, RuntimeError: As ``utils.checkpoint.load_frozen_network``.
    """
    key = 'g' if method == 'random_generator_hr' else ('up' if opt.get('network_up') else 't')
    has = opt.get(f'network_{key}') and (opt.get('path') or {}).get(f'pretrain_network_{key}')
    if key == 'g' and not has:
        raise ValueError('random_generator_hr needs GSDD\'s generator: network_g and path.pretrain_network_g in the '
                         'option file, or --like a GSDD set (its run\'s generator is used)')
    if not has:
        raise ValueError('random_teacher_hr / idc_init need network_t and path.pretrain_network_t (or network_up and '
                         'path.pretrain_network_up) in the option file: the HR side is that network applied to the LR')
    return load_frozen_network(opt, key, device), key


@torch.no_grad()
def network_hr(net, lq, batch_size=32):
    """HR = clamp(net(lq), 0, 1), in batches without gradients, as IDC makes x_hat^HR.

    Args:
        net (nn.Module): The x``scale`` network (eval mode); batches go to the device of its parameters.
        lq (Tensor): (n, 3, h, w) float LR patches in [0, 1].
        batch_size (int): Patches per forward. Default: 32.

    Returns:
        Tensor: (n, 3, scale h, scale w) in [0, 1] on the CPU; for n = 0 an empty (0, 3, 0, 0) tensor.
    """
    device = next(net.parameters()).device
    out = [net(lq[i:i + batch_size].to(device)).clamp(0, 1).cpu() for i in range(0, lq.shape[0], batch_size)]
    return torch.cat(out) if out else lq.new_zeros((0, 3, 0, 0))


def idc_options_of(opt, idc_set):
    """``opt`` with the options of the IDC run that wrote ``idc_set``, so that ``idc_init`` reproduces its x_hat.

    The run's ``distill``, ``manual_seed``, ``network_t``, ``network_up``, its ``path`` entries ending in ``_t`` /
    ``_up``
    and its ``meta_info_file`` replace those of ``opt`` (a shallow copy; ``opt`` is not modified).

    Raises:
        ValueError: The set was not written by IDC, its (gt_size, stride) differ from the pool's, or its manifest is
            invalid.
        FileNotFoundError: ``idc_set`` holds no ``distill.json``.
        KeyError: ``opt`` lacks ``datasets.train`` or the ``gt_size`` / ``stride`` the run records.
    """
    manifest = read_manifest(idc_set)
    if manifest.get('method') != 'idc':
        raise ValueError(f'idc_init --like needs an IDC set; {idc_set} was written by {manifest.get("method")!r}')
    idc_opt = manifest.get('options') or {}
    pool, idc_data = opt['datasets']['train'], (idc_opt.get('datasets') or {}).get('train') or {}
    for key in ('gt_size', 'stride'):
        if key in idc_data and int(idc_data[key]) != int(pool[key]):
            raise ValueError(f'idc_init: {idc_set} cut {key}={idc_data[key]} patches, the pool of the option file '
                             f'{pool[key]}: give the IDC run\'s patch grid')
    out = dict(opt)
    for key in ('distill', 'manual_seed', 'network_t', 'network_up'):
        if key in idc_opt:
            out[key] = idc_opt[key]
    out['path'] = dict(opt.get('path') or {})
    out['path'].update({k: v for k, v in (idc_opt.get('path') or {}).items() if k.endswith(('_t', '_up'))})
    if idc_data.get('meta_info_file'):  # IDC condensed a subset of the images: start from the same images
        out['datasets'] = dict(opt['datasets'], train=dict(pool, meta_info_file=idc_data['meta_info_file']))
    return out


def gsdd_options_of(opt, gsdd_set):
    """``opt`` (a shallow copy) with the run's ``network_g`` and ``path`` entries ending in ``_g``, from ``gsdd_set``.

    Raises:
        ValueError: The set was not written by GSDD, records no ``network_g``, or its manifest is invalid.
        FileNotFoundError: ``gsdd_set`` holds no ``distill.json``.
    """
    manifest = read_manifest(gsdd_set)
    run = manifest.get('options') or {}
    if manifest.get('method') != 'gsdd' or not run.get('network_g'):
        raise ValueError(f'random_generator_hr --like takes a GSDD set (its generator is used); {gsdd_set} was '
                         f'written by {manifest.get("method")!r}')
    out = dict(opt, network_g=run['network_g'])
    out['path'] = dict(opt.get('path') or {})
    out['path'].update({k: v for k, v in (run.get('path') or {}).items() if k.endswith('_g')})
    return out


def idc_initial_picks(source, opt):
    """Per image, IDC's initial x_hat ``(init_ids, x0)``, drawn as ``IDCModel`` starts instance i.

    Args:
        source (SRInstanceDataset): The pool (one instance per image).
        opt (dict): Whole options: ``distill`` (missing: IDC's defaults) and ``manual_seed`` (missing: 0).

    Returns:
        list: Per image ``(init_ids, x0)``: (n,) long patch indices (-1 for ``init: noise``) and (n, 3, h, w) float32
        LR patches in [0, 1] on the CPU, n = max(1, round(ratio N)); None for an image smaller than a patch.

    Raises:
        ValueError: An invalid ``distill`` option or ``distill.init``, or an image that cannot be read.
    """
    from basicsr_distill.models.distill_units import unit_generator
    from basicsr_distill.models.idc_model import IDC_DEFAULTS, initial_x_hat
    from basicsr_distill.utils.options import merge_options
    cfg = merge_options(IDC_DEFAULTS, opt.get('distill'))
    seed = int(opt.get('manual_seed') or 0)
    picks = []
    for i in range(source.num_instances):
        data = source.load_instance(i)
        lq = data['lq']
        picks.append(
            initial_x_hat(lq, cfg['ratio'], cfg['init'], unit_generator(seed, i), data['gt'], source.scale) if lq.
            shape[0] else None)
    return picks


def build_feature_net(features, opt, lq_size, device, seed=0, feature_layer=None):
    """The embedding of herding / k-center: the teacher (``'teacher'``) or a seeded random DM ResNet18 (else).

    Args:
        features (str): ``'teacher'`` or ``'random'``.
        opt (dict): Whole options; read for the teacher only.
        lq_size (int): LR patch side (pixels); random network only.
        device (torch.device | str): Where the network goes.
        seed (int): Weights seed of the random network. Default: 0.
        feature_layer (str | None): Teacher layer; None: ``distill.feature_layer``. Default: None.

    Returns:
        tuple: ``(net, layer, description)``: the frozen network, the teacher layer to tap (None:
        ``forward_features``; always None for the random network), and a JSON-compatible description for the manifest.

    Raises:
        ValueError, KeyError, FileNotFoundError, RuntimeError: ``'teacher'``: as :func:`load_teacher`.
    """
    if features == 'teacher':
        net, path = load_teacher(opt, device)
        layer = feature_layer or (opt.get('distill') or {}).get('feature_layer')
        return net, layer, {'network_t': opt['network_t'], 'pretrain_network_t': path, 'feature_layer': layer}
    net = random_feature_network((lq_size, lq_size), torch.Generator().manual_seed(seed),
                                 num_feat=RANDOM_FEATURE_WIDTH).to(device)
    return net, None, {
        'arch': 'DMResNet18',
        'norm': net.norm,
        'num_feat': net.num_feat,
        'pool_size': net.pool_size,
        'weights_seed': seed
    }


def describe_pool(source, method, opt, device, features='teacher', seed=0, feature_layer=None):
    """One pass over the images: patch counts and what ``method`` needs of every patch (row k = patch k of the pool).

    Args:
        source (SRInstanceDataset): The pool.
        method (str): One of :data:`METHODS` but the controls (described as ``'random'``).
        opt (dict): Whole options (for the teacher).
        device (torch.device | str): Where the feature network runs.
        features, seed, feature_layer: As :func:`build_feature_net`.

    Returns:
        tuple: (counts per image, descriptors, feature-net description or None). Descriptors (float64, P = sum of the
        counts): (P, D) features (herding / k-center), ``(complexity (P,), texture (P, 17))`` (dcsr), (P,) PSNR_bic in
        dB (psnr_bic*), None (random or an empty pool).

    Raises:
        ValueError: An image that cannot be read, an unknown ``features``, patch sides or a scale the scores cannot
            use (e.g. scale 1 for PSNR_bic); as :func:`build_feature_net`.
        KeyError, FileNotFoundError, RuntimeError: Loading the teacher; KeyError also for an unknown ``feature_layer``.
    """
    net = layer = described = None
    if method in FEATURE_METHODS:
        net, layer, described = build_feature_net(features, opt, source.gt_size // source.scale, device, seed,
                                                  feature_layer)
    counts, parts = [], []
    for i in range(source.num_instances):
        inst = source.load_instance(i)
        counts.append(inst['lq'].shape[0])
        if not counts[-1] or method == 'random':
            continue
        if method in FEATURE_METHODS:
            parts.append(patch_features(inst['lq'], features, net=net, layer=layer))
        else:
            hr = inst['gt'].permute(0, 2, 3, 1).numpy()
            if method == 'dcsr':
                parts.append((texture_complexity(hr), texture_features(hr)))
            else:
                parts.append(psnr_bic_batch(hr, source.scale))
    if method == 'random' or not parts:
        return counts, None, described
    if method == 'dcsr':
        return counts, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), described
    return counts, np.concatenate(parts), described


def run_method(method, descriptors, num_pool, num, seed=0, kcenter_start='mean', num_clusters=15):
    """n distinct pool indices chosen by ``method``, and an optional per-index score for the pair info.

    Args:
        method (str): ``'random'``, ``'herding'``, ``'kcenter'``, ``'dcsr'``, ``'psnr_bic'`` or ``'psnr_bic_lowest'``
            (any other value runs as ``'psnr_bic_lowest'``).
        descriptors (ndarray | tuple | None): What :func:`describe_pool` returned for ``method``.
        num_pool (int): P, the pool size.
        num (int): n, 1 <= n <= P.
        seed (int): The method's draws (random, kcenter's random start, dcsr, psnr_bic). Default: 0.
        kcenter_start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        num_clusters (int): dcsr's k-means clusters. Default: 15.

    Returns:
        tuple: ``(indices, score)``: indices sorted (random, psnr_bic), in pick order (herding, kcenter), round-robin
        (dcsr) or by increasing PSNR_bic (psnr_bic_lowest); score None or ``(info key, (P,) values)``
        (``'texture_complexity'`` or ``'psnr_bic'``).

    Raises:
        ValueError: n out of range (psnr_bic: more than the patches below the median), features not a finite (P, D)
            array, an unknown ``kcenter_start``, ``num_clusters`` < 1.
    """
    if method == 'random':
        return select_random(num_pool, num, seed), None
    if method == 'herding':
        return select_herding(descriptors, num), None
    if method == 'kcenter':
        return select_kcenter(descriptors, num, start=kcenter_start, seed=seed), None
    if method == 'dcsr':
        complexity, feats = descriptors
        return select_dcsr_from_descriptors(complexity, feats, num, num_clusters, seed), \
            ('texture_complexity', complexity)
    if method == 'psnr_bic':
        return select_psnr_bic_threshold(descriptors, num, seed=seed), ('psnr_bic', descriptors)
    return select_lowest_psnr_bic(descriptors, num), ('psnr_bic', descriptors)


def check_out_folder(out, image_folder):
    """Refuse an output folder equal to, inside or containing the training image folder.

    Raises:
        ValueError: Naming both folders; nothing is written.
    """
    if not image_folder:
        return
    out_real, images = osp.realpath(out), osp.realpath(image_folder)
    if out_real == images:
        how = 'is'
    elif out_real.startswith(images.rstrip(os.sep) + os.sep):
        how = 'is inside'
    elif images.startswith(out_real.rstrip(os.sep) + os.sep):
        how = 'contains'
    else:
        return
    raise ValueError(f'out (--out) {out} {how} the training image folder {image_folder} (datasets.train.dataroot_gt '
                     'of the option file): the set would be written among the source images. Pick another output '
                     'folder. Nothing was written.')


def select_subset(opt,
                  out,
                  method='random',
                  num_pairs=None,
                  ratio=None,
                  like=None,
                  seed=0,
                  features='teacher',
                  feature_layer=None,
                  kcenter_start='mean',
                  num_clusters=15,
                  device=None):
    """Build the option file's patch pool, run ``method`` and write the chosen pairs to ``out`` as a distilled set.

    Exactly one of ``num_pairs`` (n), ``ratio`` (n = max(1, round(ratio P))) or ``like`` gives the size. Pair names are
    ``<image>_<tag><j:04d>`` (tag ``rand`` for random and the random controls, ``idcinit``, else the method; j the
    patch's
    index in its image); ``wall_time_s`` covers scoring, selecting and writing.

    Args:
        opt (str | dict): A distillation option file or its options; ``datasets.train`` and ``scale`` define the pool.
        out (str): Output folder.
        method (str): One of :data:`METHODS`. Default: ``'random'``.
        num_pairs (int | None): n. Default: None.
        ratio (float | None): Fraction of the pool, in (0, 1]. Default: None.
        like (str | None): A distilled set whose pair count to match; for ``idc_init`` an IDC set (its run's options,
            :func:`idc_options_of`), for ``random_generator_hr`` a GSDD set (its generator). Default: None.
        seed (int): The method's draws and the random features' weights (idc_init follows ``manual_seed``). Default: 0.
        features (str): Herding / k-center: ``'teacher'`` or ``'random'``. Default: ``'teacher'``.
        feature_layer (str | None): Teacher layer; None: ``distill.feature_layer``, else ``forward_features``.
        kcenter_start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        num_clusters (int): dcsr's k-means clusters (the paper's 15). Default: 15.
        device (str | torch.device | None): Where features and the controls' network run; None: CUDA if available.

    Returns:
        dict: ``{'out': absolute path, 'method', 'num_pairs': n, 'pool': P}``.

    Raises:
        ValueError: Not exactly one size, an unknown method, ``ratio`` out of range, ``out`` overlapping the image
            folder (before anything is written), n not in [1, P], a missing teacher or HR network, a ``like`` set of
            the wrong method or patch grid, a size other than IDC's for idc_init; or as the dataset, the selection
            rules, the weights loading and the writer.
        FileNotFoundError: The option file, image folder, ``like`` set or a weights file is missing.
        FileExistsError: ``out`` holds images or shards but no ``distill.json``.
        KeyError: An unknown network type or ``feature_layer``, options without ``datasets.train`` / ``scale``.
        RuntimeError: Weights whose keys do not fit the network.
        yaml.YAMLError: The option file is not valid YAML.
    """
    start = time.monotonic()
    if sum(v is not None for v in (num_pairs, ratio, like)) != 1:
        raise ValueError(f'give exactly one of num_pairs, ratio and like, got num_pairs={num_pairs!r}, '
                         f'ratio={ratio!r}, like={like!r}')
    if method not in METHODS:
        raise ValueError(f'method must be one of {list(METHODS)}, got {method!r}')
    if ratio is not None and not (isinstance(ratio, numbers.Real) and not isinstance(ratio, bool)
                                  and math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f'ratio (--ratio) must be a fraction of the pool in (0, 1], got {ratio!r}. Nothing was '
                         'written.')
    source_options = opt if isinstance(opt, (str, os.PathLike)) else None
    if source_options is not None:
        opt = read_option_file(opt)
    if method == 'idc_init' and like:
        opt = idc_options_of(opt, like)
    elif method == 'random_generator_hr' and like:
        opt = gsdd_options_of(opt, like)
    dataset_opt = dict(opt['datasets']['train'], scale=opt['scale'], phase='train')
    check_out_folder(out, dataset_opt.get('dataroot_gt'))
    source = SRInstanceDataset(dataset_opt)
    if device is None:
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    hr_net, hr_key = load_hr_network(opt, torch.device(device), method) if method in CONTROLS else (None, None)
    pool_method = 'random' if method in CONTROLS else method
    counts, descriptors, feature_net = describe_pool(source, pool_method, opt, torch.device(device), features, seed,
                                                     feature_layer)
    pool = [(i, j) for i, count in enumerate(counts) for j in range(count)]
    if like:
        num = read_manifest(like)['num_pairs']
    elif ratio is not None:
        num = max(1, round(ratio * len(pool)))
    else:
        num = num_pairs
    init = None
    if method == 'idc_init':  # IDC's own size: n per image from distill.ratio
        init = idc_initial_picks(source, opt)
        idc_num = sum(p[1].shape[0] for p in init if p is not None)
        if num != idc_num:
            raise ValueError(f'idc_init takes IDC\'s size: {idc_num} pairs for distill.ratio of the option file, '
                             f'but {num} were asked for (give the IDC set as like, or its pair count)')
        chosen, score = [], None
        picked = [[] if p is None else list(range(p[1].shape[0])) for p in init]
        rank = {}
    else:
        num = check_num_select(num, len(pool))
        chosen, score = run_method(pool_method, descriptors, len(pool), num, seed, kcenter_start, num_clusters)
        rank = {pool[k]: r for r, k in enumerate(chosen)}
        picked = [[] for _ in counts]
        for i, j in sorted(rank):
            picked[i].append(j)

    options = {'selection': method, 'seed': seed, 'source_options': source_options, 'num_pairs': num}
    if method in FEATURE_METHODS:
        options.update(features=features, feature_net=feature_net)
    if method == 'kcenter':
        options['kcenter_start'] = kcenter_start
    elif method == 'dcsr':
        options['num_clusters'] = num_clusters
    elif method in CONTROLS:
        options.update(hr_network=opt[f'network_{hr_key}'], hr_weights=opt['path'][f'pretrain_network_{hr_key}'])
        if method == 'idc_init':
            options.update(manual_seed=int(opt.get('manual_seed') or 0), distill=opt.get('distill'))
    elif method in ('psnr_bic', 'psnr_bic_lowest'):
        options['psnr_bic_scale'] = source.scale
        if method == 'psnr_bic':
            options['psnr_bic_threshold'] = 'median'
    writer = DistilledSetWriter(
        out,
        method=method,
        scale=int(opt['scale']),
        source={
            'folder': dataset_opt['dataroot_gt'],
            'num_images': source.num_instances,
            'num_patches': len(pool),
            'gt_size': source.gt_size,
            'stride': source.stride
        },
        size_control={
            'num_pairs': num,
            'r': num / len(pool)
        },
        options=options,
        start_time=start,
        unit_sources=dict(zip(source.names, ([path] for path in source.paths))))
    tag = {'random': 'rand', 'random_teacher_hr': 'rand', 'random_generator_hr': 'rand'}.get(method, method)
    tag = 'idcinit' if method == 'idc_init' else tag
    offsets = np.cumsum([0] + counts)
    for i in range(source.num_instances):
        inst = source.load_instance(i) if picked[i] else {'name': source.names[i]}
        pairs = []
        if method == 'idc_init' and picked[i]:
            ids, lq = init[i]
        elif picked[i]:
            ids, lq = torch.tensor(picked[i], dtype=torch.long), inst['lq'][picked[i]]
        hr = network_hr(hr_net, lq) if hr_net is not None and picked[i] else None
        if hr is not None and hr_key == 'g':  # as GSDD writes a pair: LR = the bicubic x 1/scale of G's output
            lq = torch.stack([torch.from_numpy(bicubic_lr(h.permute(1, 2, 0).numpy(), source.scale)) for h in hr])
            lq = lq.permute(0, 3, 1, 2)
        for k, j in enumerate(picked[i]):
            real_j = int(ids[k])
            info = {'instance': inst['name'], 'source_image': inst['path']}
            info['hr_yx'] = list(inst['coords'][real_j]) if real_j >= 0 else None
            if method != 'random' and method not in CONTROLS:  # random keeps its former entries
                info['selection_rank'] = rank[(i, j)]
            if score is not None:
                info[score[0]] = float(score[1][offsets[i] + j])
            if hr is not None:
                info['hr_from'] = f'network_{hr_key}'
                if hr_key == 'g':
                    info['lq_from'] = 'bicubic of hr'
            pairs.append({
                'name': f'{inst["name"]}_{tag}{real_j if method != "idc_init" else k:04d}',
                'lq': lq[k].permute(1, 2, 0).numpy(),
                'gt': (hr[k] if hr is not None else inst['gt'][real_j]).permute(1, 2, 0).numpy(),
                'info': info
            })
        writer.write_unit(inst['name'], pairs)
    writer.finalize()
    return {'out': osp.abspath(out), 'method': method, 'num_pairs': num, 'pool': len(pool)}
