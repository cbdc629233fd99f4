"""A subset of the real patch pool of an option file, chosen by a coreset / pruning baseline and written in the
distilled-set format: what ``scripts/select_subset.py`` runs, callable from Python (:func:`select_subset`).

The patch pool is the one a distillation option file defines (its ``datasets.train``: HR folder, scale, gt_size,
stride, as :class:`~basicsr_distill.data.sr_instance_dataset.SRInstanceDataset` cuts it), so the subset is directly
comparable with the distilled set. Methods (:data:`METHODS`):

* ``random``: uniform, seeded;
* ``herding``, ``kcenter``: on per-patch features of the LR patches, ``features='teacher'`` (the option file's
  ``network_t`` loaded from ``path.pretrain_network_t``, features at ``distill.feature_layer`` or
  ``feature_layer``, global-average-pooled) or ``features='random'`` (a seeded random DM ResNet18);
* ``dcsr``: Sobel complexity above the median, k-means (``num_clusters``) on texture descriptors, even sampling;
* ``psnr_bic``: Threshold Crop Select: the patches below the median PSNR_bic (bicubic round trip at the option
  file's scale), then a uniform seeded draw among them; ``psnr_bic_lowest``: the lowest PSNR_bic first.

Controls that isolate what a distillation method adds (:data:`CONTROLS`; the HR side is made as IDC makes it, by the
option file's ``network_up`` if it has one, else its teacher ``network_t``, clamped to [0, 1]):

* ``random_teacher_hr``: the LR patches of ``random`` (same seed: same pairs, same names and count), HR = the
  network applied to the LR patch. It separates relabelling by the teacher from what IDC's optimisation of the LR adds;
* ``idc_init``: IDC's initial x_hat, before any step (the first draws of each instance's seeded generator, exactly as
  ``IDCModel`` draws them from the option file's ``manual_seed`` and ``distill.ratio`` / ``distill.init``), HR by the
  same network. Its size is IDC's: n = max(1, round(r N)) per image; a size given that differs is refused. With
  ``like`` an IDC set, that run's ``distill`` options, ``manual_seed`` and networks (from its ``distill.json``) are
  used, so ``idc_init`` is the start of that very run;
* ``random_generator_hr`` (GSDD's control): the patches of ``random`` with HR = clamp(G(LR), 0, 1), G the GSDD
  generator ``network_g`` (``path.pretrain_network_g``; with ``like`` a GSDD set, that run's generator from its
  ``distill.json``), and LR = the bicubic x 1/scale of that HR, exactly as ``GSDDModel`` writes a pair from a latent
  z. It is GSDD with z = the bicubic LR of a random crop and neither inversion nor matching: the generator alone.

The pool is read one image at a time (per-patch features / scores are kept, not the patches), and the images with
chosen patches are read again to write them.
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
    """The option file's ``network_t`` with ``path.pretrain_network_t`` (strict, as the distillation models load it).

    The weights are loaded by :func:`~basicsr_distill.utils.checkpoint.load_frozen_network` (``path.param_key_t``
    and ``path.strict_load_t`` honoured; strict by default).

    Args:
        opt (dict): Whole options; ``network_t`` and ``path.pretrain_network_t`` are read.
        device (torch.device | str): Where the network goes.

    Returns:
        tuple: ``(net, path)``: ``net`` (nn.Module) the network on ``device``, in eval mode without gradients;
        ``path`` (str) its weights file (``path.pretrain_network_t``).

    Raises:
        ValueError: if ``network_t`` or ``path.pretrain_network_t`` is missing.
        KeyError, FileNotFoundError, ValueError, RuntimeError: As ``load_frozen_network`` (unknown network type;
            missing, corrupt or truncated weights file; keys that do not fit the network).
    """
    path = (opt.get('path') or {}).get('pretrain_network_t')
    if not opt.get('network_t') or not path:
        raise ValueError('--features teacher needs network_t and path.pretrain_network_t in the option file; use '
                         '--features random otherwise')
    net = load_frozen_network(opt, 't', device)
    return net, path


def load_hr_network(opt, device, method='random_teacher_hr'):
    """The network that makes a control's HR side: for ``random_generator_hr`` GSDD's generator ``network_g``; for
    the IDC controls ``network_up`` if the options give one, else the teacher ``network_t`` (as IDC makes its HR).

    ``network_g`` is loaded with ``path.pretrain_network_g``, ``network_up`` with ``path.pretrain_network_up``,
    ``network_t`` with ``path.pretrain_network_t`` (:func:`~basicsr_distill.utils.checkpoint.load_frozen_network`);
    eval mode, no gradients. When ``network_up``
    is given it is the one used, so its weights path must be given too (there is no fallback to the teacher).

    Args:
        opt (dict): Whole options (``network_g`` / ``network_up`` / ``network_t`` and ``path``).
        device (torch.device | str): Where the network goes.
        method (str): The control (:data:`CONTROLS`). Default: ``'random_teacher_hr'``.

    Returns:
        tuple: ``(net, key)``: ``net`` (nn.Module) the frozen network on ``device``, ``key`` (str) ``'g'``, ``'up'``
        or ``'t'``.

    Raises:
        ValueError: if the network chosen (``network_g``; ``network_up`` when given, else ``network_t``) or its
            weights path (``path.pretrain_network_<key>``) is missing.
        KeyError, FileNotFoundError, ValueError, RuntimeError: As ``load_frozen_network`` (unknown network type;
            missing, corrupt or truncated weights file; keys that do not fit the network).
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
        net (nn.Module): The x``scale`` network (eval mode), with at least one parameter: each batch is moved to the
            device of its parameters for the forward.
        lq (Tensor): (n, 3, h, w) float LR patches in [0, 1], on any device.
        batch_size (int): Patches per forward. Default: 32.

    Returns:
        Tensor: (n, 3, scale h, scale w) on the CPU, in [0, 1] (the dtype of ``net``'s output); for n = 0 an empty
        (0, 3, 0, 0) tensor of ``lq``'s dtype and device.
    """
    device = next(net.parameters()).device
    out = [net(lq[i:i + batch_size].to(device)).clamp(0, 1).cpu() for i in range(0, lq.shape[0], batch_size)]
    return torch.cat(out) if out else lq.new_zeros((0, 3, 0, 0))


def idc_options_of(opt, idc_set):
    """``opt`` with the options of the IDC run that wrote ``idc_set``, so that ``idc_init`` reproduces its x_hat.

    The run's options are the ``options`` of ``idc_set``'s ``distill.json``: its ``distill`` section,
    ``manual_seed``, ``network_t`` and ``network_up`` replace those of ``opt`` where the run has them, and its
    ``path`` entries ending in ``_t`` or ``_up`` (e.g. ``pretrain_network_t``) update ``opt``'s ``path``. Only
    ``gt_size`` and ``stride`` of the run's ``datasets.train`` are compared with the pool's (where the run records
    them); the scale is not compared. A run restricted to some images (``datasets.train.meta_info_file``, e.g. IDC
    at a size below one pair per image of the pool) restricts the pool of ``idc_init`` to the same file.

    Args:
        opt (dict): Whole options of the pool; ``datasets.train`` must give ``gt_size`` and ``stride`` where the IDC
            run records them. Not modified.
        idc_set (str): Folder of a distilled set written by IDC.

    Returns:
        dict: A shallow copy of ``opt`` with the IDC run's ``distill``, ``manual_seed``, ``network_t``,
        ``network_up`` and ``path`` entries (``path`` a new dict; ``datasets`` a new dict when the run has a
        ``meta_info_file``; other sections shared with ``opt``).

    Raises:
        ValueError: The set was not written by IDC, or its patches (gt_size, stride) differ from the pool's;
            (from ``read_manifest``) its ``distill.json`` is not a valid manifest.
        FileNotFoundError: ``idc_set`` holds no ``distill.json`` (from ``read_manifest``).
        KeyError: ``opt`` has no ``datasets.train``, or it lacks ``gt_size`` / ``stride`` that the IDC run records.
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
    """``opt`` with the generator of the GSDD run that wrote ``gsdd_set``: its ``network_g`` and the ``path``
    entries ending in ``_g`` (``pretrain_network_g``, ``param_key_g``, ``strict_load_g``) from its ``distill.json``.

    Args:
        opt (dict): Whole options of the pool. Not modified.
        gsdd_set (str): Folder of a distilled set written by GSDD.

    Returns:
        dict: A shallow copy of ``opt`` with the run's ``network_g`` and ``path`` (a new dict) entries.

    Raises:
        ValueError: The set was not written by GSDD or records no ``network_g``; (from ``read_manifest``) its
            ``distill.json`` is not a valid manifest.
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
    """Per image, IDC's initial x_hat: ``(init_ids, x0)`` with the instance generators of the option file's seed.

    Image i is loaded and :func:`~basicsr_distill.models.idc_model.initial_x_hat` draws from a fresh
    ``unit_generator(manual_seed, i)``, with ``distill.ratio`` and ``distill.init`` of the options merged with
    ``IDC_DEFAULTS``, as ``IDCModel`` starts instance i.

    Args:
        source (SRInstanceDataset): The pool (one instance per image).
        opt (dict): Whole options: ``distill`` (None or missing: IDC's defaults) and ``manual_seed`` (None or
            missing: 0).

    Returns:
        list: One ``(init_ids, x0)`` per image, in image order: ``init_ids`` (n,) long indices into the image's
        patches (-1 for ``init: noise``), ``x0`` (n, 3, h, w) float32 LR patches in [0, 1] on the CPU, n =
        max(1, round(ratio N)); ``None`` for an image smaller than one patch (N = 0).

    Raises:
        ValueError: An unknown or wrongly typed ``distill`` option, an unknown ``distill.init`` (from
            ``merge_options`` / ``initial_x_hat``), or an image that cannot be read (from ``load_instance``).
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
    """The embedding used by herding / k-center.

    ``'teacher'``: the option file's teacher (:func:`load_teacher`); any other value builds the seeded random DM
    ResNet18 (:func:`~basicsr_distill.selection.features.random_feature_network`, width
    :data:`RANDOM_FEATURE_WIDTH`) for ``lq_size`` x ``lq_size`` inputs.

    Args:
        features (str): ``'teacher'`` or ``'random'``.
        opt (dict): Whole options (``network_t``, ``path``, ``distill.feature_layer``); read for the teacher only.
        lq_size (int): LR patch side (pixels); used by the random network only.
        device (torch.device | str): Where the network goes.
        seed (int): Seed of the random network's weights (unused for the teacher). Default: 0.
        feature_layer (str | None): Teacher layer; None: ``distill.feature_layer`` of the options. Default: None.

    Returns:
        tuple: ``(net, layer, description)``: ``net`` (nn.Module) the frozen network on ``device``; ``layer``
        (str | None) the teacher layer to tap (None: the teacher's ``forward_features``, and always None for the
        random network); ``description`` (dict) JSON-compatible (written in the manifest): ``network_t``,
        ``pretrain_network_t`` and ``feature_layer`` for the teacher, ``arch``, ``norm``, ``num_feat``,
        ``pool_size`` and ``weights_seed`` for the random network.

    Raises:
        ValueError, KeyError, FileNotFoundError, RuntimeError: ``'teacher'``: as :func:`load_teacher` (teacher or
            its weights path missing; unknown type; missing or corrupt weights; keys that do not fit).
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
    """One pass over the images: patch counts and what ``method`` needs of every patch.

    Every image is loaded (decoded) once, also for ``random``, which only counts its patches; patches are
    described in order, so row k of the descriptors is patch k of the pool (images in order, patches in order
    within each).

    Args:
        source (SRInstanceDataset): The pool.
        method (str): One of :data:`METHODS` but the controls (:func:`select_subset` describes their pool as
            ``'random'``); any method other than random, herding, k-center and dcsr is scored by PSNR_bic.
        opt (dict): Whole options (for the teacher).
        device (torch.device | str): Where the feature network runs.
        features (str): Herding / k-center: ``'teacher'`` or ``'random'``. Default: ``'teacher'``.
        seed (int): Seed of the random feature network. Default: 0.
        feature_layer (str | None): Teacher layer (see :func:`build_feature_net`). Default: None.

    Returns:
        tuple: (counts per image (list[int]), per-patch descriptors or None, feature-net description (dict) or
        None, the latter given for herding / k-center only). Descriptors, P = sum of the counts, float64 numpy on
        the CPU: (P, D) features (herding / k-center), ``(complexity (P,), texture features (P, 17))`` (dcsr), (P,)
        PSNR_bic in dB at the pool's scale (psnr_bic, psnr_bic_lowest), None (random, or an empty pool).

    Raises:
        ValueError: From :func:`build_feature_net` (teacher missing), ``load_instance`` (an image that cannot be
            read), ``patch_features`` (an unknown ``features``), ``psnr_bic_batch`` / ``texture_features`` (patch
            sides or scale they cannot use, e.g. scale 1 for PSNR_bic).
        KeyError, FileNotFoundError, RuntimeError: Loading the teacher (see :func:`load_teacher`); KeyError also
            when ``feature_layer`` is not a layer of the teacher.
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
    """Indices into the pool (in the method's order) and an optional per-index score for the pair info.

    Args:
        method (str): ``'random'``, ``'herding'``, ``'kcenter'``, ``'dcsr'``, ``'psnr_bic'`` or
            ``'psnr_bic_lowest'`` (any other value is run as ``'psnr_bic_lowest'``).
        descriptors (ndarray | tuple | None): What :func:`describe_pool` returned for ``method`` (None for random).
        num_pool (int): P, the patches of the pool (used by random).
        num (int): n, how many to select, 1 <= n <= P.
        seed (int): random: the draw; kcenter with ``kcenter_start='random'``: the start; dcsr: k-means and
            sampling; psnr_bic: the draw among the kept patches. Default: 0.
        kcenter_start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        num_clusters (int): dcsr: k-means clusters. Default: 15.

    Returns:
        tuple: ``(indices, score)``: ``indices`` (list[int]) n distinct pool indices (sorted for random and
        psnr_bic, in pick order for herding / k-center, round-robin order for dcsr, increasing PSNR_bic for
        psnr_bic_lowest); ``score`` None (random, herding, k-center) or ``(info key, (P,) values)``:
        ``('texture_complexity', complexity)`` (dcsr), ``('psnr_bic', PSNR_bic in dB)`` (psnr_bic, psnr_bic_lowest).

    Raises:
        ValueError: From the selection rules: n out of range (psnr_bic: more than the patches below the median),
            features that are not a finite (P, D) array, an unknown ``kcenter_start``, ``num_clusters`` < 1.
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
    """Refuse an output folder that is the training image folder, lies inside it or contains it (the set would be
    written among the source images, or become part of the pool of a later run).

    Args:
        out (str): The output folder (``--out``).
        image_folder (str | None): The pool's ``datasets.train.dataroot_gt``.

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
    """Read the options, build the patch pool, run the baseline ``method`` and write the chosen pairs to ``out``.

    The size is given by exactly one of ``num_pairs`` (n), ``ratio`` (n = max(1, round(ratio * P)) of the P pool
    patches) or ``like`` (the pair count of that distilled set). The set's ``wall_time_s`` covers scoring the pool,
    selecting and writing; pair ``name`` is ``<image>_<tag><j:04d>`` (tag ``rand`` for random and
    random_teacher_hr / random_generator_hr, ``idcinit`` for idc_init, else the method; j the patch's index in its
    image, for idc_init the pair's index among the image's pairs). The controls (:data:`CONTROLS`) load the HR network
    (:func:`load_hr_network`) and describe the pool as ``random``; idc_init takes IDC's own size and refuses any
    other.

    Args:
        opt (str | dict): A distillation option file (:func:`~basicsr_distill.utils.options.read_option_file`) or
            its options; its ``datasets.train`` (and top-level ``scale``) define the pool.
        out (str): Output folder (a distilled set).
        method (str): One of :data:`METHODS`. Default: ``'random'``.
        num_pairs (int | None): n. Default: None.
        ratio (float | None): Fraction of the pool. Default: None.
        like (str | None): A distilled set whose pair count to match; with ``method='idc_init'`` an IDC set, whose
            run's options are used (:func:`idc_options_of`); with ``method='random_generator_hr'`` a GSDD set,
            whose run's generator is used (:func:`gsdd_options_of`). Default: None.
        seed (int): random: the draw; kcenter with ``kcenter_start='random'``: the start; dcsr: k-means and
            sampling; psnr_bic: the draw among the kept patches; ``features='random'``: the network weights;
            random_teacher_hr, random_generator_hr: as random; idc_init: unused (the draws follow
            ``manual_seed``). Default: 0.
        features (str): Herding / k-center: ``'teacher'`` (``network_t``) or ``'random'``. Default: ``'teacher'``.
        feature_layer (str | None): Teacher layer; None: ``distill.feature_layer``, else ``forward_features``.
            Default: None.
        kcenter_start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        num_clusters (int): dcsr: k-means clusters (the paper: 15). Default: 15.
        device (str | torch.device | None): Where features are computed and the controls' HR network runs; None:
            CUDA if available, else the CPU. Default: None.

    Returns:
        dict: ``{'out': absolute path (str), 'method' (str), 'num_pairs' (int, n), 'pool' (int, P)}`` (what the
        script prints as JSON).

    Raises:
        ValueError: Not exactly one size given, an unknown method, ``ratio`` not in (0, 1], ``out`` equal to, inside
            or containing the pool's image folder (:func:`check_out_folder`; before anything is written), n not an
            int in [1, P], the teacher missing for
            ``features='teacher'`` or the HR network missing for a control, (idc_init) ``like`` not an IDC set or
            of another patch grid, or a size other than IDC's, (random_generator_hr) ``like`` not a GSDD set;
            whatever the dataset, the selection rules, the weights loading and the writer refuse (e.g. ``out``
            holding a distilled set of another run).
        FileNotFoundError: The option file, the image folder, the ``like`` set or a weights file is missing.
        FileExistsError: ``out`` holds images or shards but no ``distill.json`` (from the writer).
        KeyError: An unknown network type, a ``feature_layer`` the teacher lacks, options without
            ``datasets.train`` / ``scale``, or (idc_init with ``like``) a ``gt_size`` / ``stride`` the IDC run
            records but the pool's options lack.
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
