"""Evaluation of a trained SR network on test folders: PSNR / SSIM / NIQE (BasicSR's metrics) and optional LPIPS, and
the training wall time of a BasicSR train log (:func:`parse_train_time`).

LPIPS needs the ``lpips`` package (not a dependency), imported only when asked for, and never downloads: without it
or its weights the values are None and :func:`load_lpips` says how to enable it.
"""
import importlib
import numpy as np
import os
import os.path as osp
import re
import torch
import yaml
from collections.abc import Mapping

from basicsr.metrics import calculate_niqe
from basicsr.utils import get_root_logger
from basicsr_distill.utils.sr_eval import evaluate_sr, list_images

METRICS = ('psnr', 'ssim', 'niqe', 'lpips')
NIQE_BLOCK = 96  # BasicSR's NIQE works on 96 x 96 blocks without overlap
NIQE_PARAMS_NAME = 'niqe_pris_params.npz'
LPIPS_VERSION = '0.1.4'
ALEXNET_FILE = 'alexnet-owt-7be5be79.pth'  # torchvision's AlexNet IMAGENET1K_V1 weights, LPIPS' trunk
TRAIN_TIME_RE = re.compile(r'End of training\. Time consumed: (?:(\d+) days?, )?(\d+):(\d{2}):(\d{2})')


def niqe_params_path():
    """Path of BasicSR's NIQE parameters ``niqe_pris_params.npz``, shipped beside ``basicsr/metrics/niqe.py``."""
    niqe_module = importlib.import_module('basicsr.metrics.niqe')
    return osp.join(osp.dirname(osp.abspath(niqe_module.__file__)), NIQE_PARAMS_NAME)


def check_niqe_params():
    """Path of the installed basicsr's ``niqe_pris_params.npz``, checked before any work.

    Raises:
        FileNotFoundError: The file is missing from basicsr.
        ValueError: It cannot be read or lacks ``mu_pris_param``, ``cov_pris_param`` or ``gaussian_window``.
    """
    path = niqe_params_path()
    if not osp.isfile(path):
        raise FileNotFoundError(f'NIQE needs BasicSR\'s {NIQE_PARAMS_NAME}, which is missing from the installed '
                                f'basicsr (expected at "{path}"): reinstall basicsr==1.4.2 (the file ships inside the '
                                f'package, basicsr/metrics/), or leave niqe out of the metrics.')
    try:
        with np.load(path) as params:
            missing = {'mu_pris_param', 'cov_pris_param', 'gaussian_window'}.difference(params.files)
    except Exception as err:  # a truncated or foreign file: np.load raises various errors
        raise ValueError(f'Cannot read BasicSR\'s NIQE parameters "{path}" ({err}): reinstall basicsr==1.4.2.') from err
    if missing:
        raise ValueError(f'BasicSR\'s NIQE parameters "{path}" lack {sorted(missing)}: reinstall basicsr==1.4.2.')
    return path


def niqe_of(img_sr, crop_border):
    """NIQE (lower is better) of a uint8 BGR (h, w, 3) SR output with BasicSR's ``calculate_niqe`` (Y channel), after
    shaving ``crop_border`` pixels.

    Raises:
        ValueError: Fewer than two whole 96 x 96 blocks after the shave, BasicSR's ``niqe`` fails (flat blocks), or a
            non-finite score.
    """
    h, w = img_sr.shape[0] - 2 * crop_border, img_sr.shape[1] - 2 * crop_border
    if max(h, 0) // NIQE_BLOCK * (max(w, 0) // NIQE_BLOCK) < 2:
        raise ValueError(f'NIQE needs at least two {NIQE_BLOCK} x {NIQE_BLOCK} blocks (e.g. {NIQE_BLOCK} x '
                         f'{2 * NIQE_BLOCK} pixels) after shaving {crop_border} pixels per border; the image is '
                         f'{img_sr.shape[0]} x {img_sr.shape[1]}.')
    try:
        value = float(calculate_niqe(img_sr, crop_border, input_order='HWC', convert_to='y'))
    except np.linalg.LinAlgError as err:  # flat blocks give NaN features, and the covariance is then undefined
        raise ValueError(f'NIQE failed ({err}): the image ({img_sr.shape[0]} x {img_sr.shape[1]}) has too few '
                         f'textured {NIQE_BLOCK} x {NIQE_BLOCK} blocks.') from err
    if not np.isfinite(value):
        raise ValueError(f'NIQE is {value} for an image of {img_sr.shape[0]} x {img_sr.shape[1]} (border '
                         f'{crop_border}).')
    return value


def lpips_unavailable_message(reason):
    """The message reported instead of LPIPS values: ``reason`` plus how to enable LPIPS without any download."""
    return (f'LPIPS unavailable: {reason}. To enable it (nothing is downloaded at run time): pip install '
            f'lpips=={LPIPS_VERSION} (the package ships its linear weights lpips/weights/v0.1/alex.pth) and put '
            f'torchvision\'s AlexNet weights {ALEXNET_FILE} under $TORCH_HOME/hub/checkpoints/ (here: '
            f'"{osp.join(torch.hub.get_dir(), "checkpoints")}").')


def load_lpips(device='cpu'):
    """LPIPS (AlexNet, v0.1) from local weights only: ``lpips/weights/v0.1/alex.pth`` in the package and torchvision's
    ``alexnet-owt-7be5be79.pth`` under ``torch.hub.get_dir()/checkpoints``.

    Returns:
        tuple: ``(net, None)`` (eval mode, on ``device``) or ``(None, message)`` (:func:`lpips_unavailable_message`).
    """
    try:
        import lpips
    except Exception as err:  # ImportError, or an import-time error of lpips' own dependencies
        return None, lpips_unavailable_message(f'the lpips package cannot be imported ({type(err).__name__}: {err})')
    linear_weights = osp.join(osp.dirname(osp.abspath(lpips.__file__)), 'weights', 'v0.1', 'alex.pth')
    if not osp.isfile(linear_weights):
        return None, lpips_unavailable_message(f'lpips is installed but its weights "{linear_weights}" are missing')
    alexnet_weights = osp.join(torch.hub.get_dir(), 'checkpoints', ALEXNET_FILE)
    if not osp.isfile(alexnet_weights):
        return None, lpips_unavailable_message(f'torchvision\'s AlexNet weights "{alexnet_weights}" are missing')
    try:
        net = lpips.LPIPS(net='alex', version='0.1', verbose=False)
    except Exception as err:  # e.g. an lpips / torchvision version mismatch or a corrupt weight file
        return None, lpips_unavailable_message(f'building lpips.LPIPS(net=\'alex\') failed ({type(err).__name__}: '
                                               f'{err})')
    return net.to(device).eval(), None


def lpips_of(lpips_net, img_sr, img_gt, crop_border, device='cpu'):
    """LPIPS distance (lower is better) between uint8 BGR (h, w, 3) ``img_sr`` and ``img_gt``, after shaving
    ``crop_border``; ``lpips_net(sr, gt)`` takes (1, 3, h, w) RGB tensors in [-1, 1] on ``device``.
    """

    def to_tensor(img):
        if crop_border:
            img = img[crop_border:-crop_border, crop_border:-crop_border]
        rgb = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32)
        return (torch.from_numpy(rgb) / 127.5 - 1.).unsqueeze(0).to(device)

    with torch.no_grad():
        return float(lpips_net(to_tensor(img_sr), to_tensor(img_gt)).reshape(-1)[0])


def parse_test_set(spec):
    """``NAME=HR_DIR[:LR_DIR]`` -> ``(name, hr_dir, lr_dir or None)``; the first ``:`` after ``=`` separates the
    folders.

    Raises:
        ValueError: No ``=``, or an empty name or HR folder.
    """
    name, sep, dirs = spec.partition('=')
    hr_dir, _, lr_dir = dirs.partition(':')
    if not sep or not name.strip() or not hr_dir:
        raise ValueError(f'A test set is NAME=HR_DIR[:LR_DIR], got "{spec}".')
    return name.strip(), hr_dir, lr_dir or None


def check_test_sets(test_sets):
    """Test sets (``{name: hr_dir}``, ``{name: (hr_dir, lr_dir)}`` or ``[(name, hr_dir[, lr_dir])]``) checked before any
    work, as ``[(name, hr_dir, lr_dir or None)]`` in the order given.

    Raises:
        ValueError: No test set, or a repeated name.
        FileNotFoundError: A missing folder, or an HR folder without images.
    """
    if isinstance(test_sets, Mapping):
        items = [(name, *((value, None) if isinstance(value, (str, os.PathLike)) else tuple(value)))
                 for name, value in test_sets.items()]
    else:
        items = [tuple(item) if len(item) == 3 else (*item, None) for item in test_sets]
    if not items:
        raise ValueError('No test set given.')
    names = [item[0] for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f'Duplicate test set names {duplicates}.')
    result = []
    for name, hr_dir, lr_dir in items:
        if not list_images(hr_dir):  # FileNotFoundError naming a missing folder
            raise FileNotFoundError(f'Test set "{name}": no images in "{hr_dir}".')
        if lr_dir is not None:
            list_images(lr_dir)
        result.append((name, str(hr_dir), None if lr_dir is None else str(lr_dir)))
    return result


def evaluate_network(net,
                     test_sets,
                     scale=4,
                     metrics=METRICS,
                     device='cpu',
                     lpips_net=None,
                     crop_border=None,
                     test_y_channel=True):
    """PSNR, SSIM, NIQE and LPIPS of an SR network on test folders, through
    :func:`~basicsr_distill.utils.sr_eval.evaluate_sr`.

    PSNR / SSIM are BasicSR's (``crop_border``, Y channel by default), NIQE BasicSR's on the SR output (parameters
    checked first), LPIPS on RGB in [-1, 1]; an unavailable LPIPS gives None and a message in ``'unavailable'`` (also
    logged). Means are over a set's images; ``metrics`` selects what is reported.

    Args:
        net (nn.Module): SR network, RGB [0, 1] in and out, ``scale`` times the input (moved to ``device``; its
            training mode is restored).
        test_sets (dict | list): As :func:`check_test_sets`; a missing ``lr_dir`` makes the LR with MATLAB bicubic.
        scale (int): Upsampling factor. Default: 4.
        metrics (Sequence[str]): Subset of ``('psnr', 'ssim', 'niqe', 'lpips')``. Default: all four.
        device (str | torch.device): Device of the network and LPIPS. Default: ``'cpu'``.
        lpips_net (callable | None): LPIPS to use instead of :func:`load_lpips` (as :func:`lpips_of`). Default: None.
        crop_border (int | None): Border shaved for every metric; None: ``scale``.
        test_y_channel (bool): PSNR / SSIM on the Y channel (BT.601) instead of BGR. Default: True.

    Returns:
        dict: ``{'scale', 'crop_border', 'test_y_channel', 'metrics', 'unavailable': {metric: message}, 'test_sets':
        {name: {'hr', 'lr', 'num_images', <metric>: float | None, 'per_image': {hr_name: {<metric>: ...}}}}}``.

    Raises:
        ValueError: An unknown metric, a repeated set name, an image too small for NIQE, or as :func:`evaluate_sr`.
        FileNotFoundError: A missing or empty folder, a missing LR image, or NIQE's parameters missing.
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f'Unknown metrics {unknown}; choose at least one of {list(METRICS)}.')
    crop_border = scale if crop_border is None else crop_border
    test_sets = check_test_sets(test_sets)
    unavailable = {}
    extra = {}
    if 'niqe' in metrics:
        check_niqe_params()
        extra['niqe'] = lambda img_sr, img_gt: niqe_of(img_sr, crop_border)
    if 'lpips' in metrics:
        if lpips_net is None:
            lpips_net, message = load_lpips(device)
            if message is not None:
                unavailable['lpips'] = message
                get_root_logger().warning(message)
        if lpips_net is not None:
            extra['lpips'] = lambda img_sr, img_gt: lpips_of(lpips_net, img_sr, img_gt, crop_border, device)

    results = {}
    for name, hr_dir, lr_dir in test_sets:
        res = evaluate_sr(
            net,
            hr_dir,
            lr_dir,
            scale=scale,
            device=device,
            crop_border=crop_border,
            test_y_channel=test_y_channel,
            extra_metrics=extra)
        results[name] = {'hr': hr_dir, 'lr': lr_dir, 'num_images': len(res['per_image'])}
        results[name].update({m: res.get(m) for m in metrics})
        per_image = {img: {m: values.get(m) for m in metrics} for img, values in res['per_image'].items()}
        results[name]['per_image'] = per_image
    return {
        'scale': scale,
        'crop_border': crop_border,
        'test_y_channel': test_y_channel,
        'metrics': metrics,
        'unavailable': unavailable,
        'test_sets': results
    }


def parse_train_time(log_path):
    """Training wall time from the last ``End of training. Time consumed: H:MM:SS`` line of a BasicSR train log (days
    read too); a run resumed with ``--auto_resume`` has its own log, covering that run only.

    Returns:
        dict: ``{'path', 'seconds': int, 'text'}``, ``text`` as logged (e.g. ``'0:02:15'``).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It has no such line (unfinished run, or not a BasicSR train log).
    """
    log_path = str(log_path)
    if not osp.isfile(log_path):
        raise FileNotFoundError(f'Train log not found: "{log_path}".')
    with open(log_path, encoding='utf-8', errors='replace') as f:
        matches = TRAIN_TIME_RE.findall(f.read())
    if not matches:
        raise ValueError(f'No "End of training. Time consumed: H:MM:SS" line in "{log_path}": the run did not finish, '
                         f'or this is not a BasicSR train log.')
    days, hours, minutes, seconds = matches[-1]
    total = ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)
    text = (f'{days} day{"s" if int(days) != 1 else ""}, ' if days else '') + f'{hours}:{minutes}:{seconds}'
    return {'path': log_path, 'seconds': total, 'text': text}


def add_arch_arguments(parser, required=False):
    """Add ``--arch NAME`` and the repeatable ``--arch-opt KEY=VALUE`` (see :func:`parse_arch_opts`) to a parser."""
    parser.add_argument('--arch', required=required, help='architecture name in BasicSR\'s ARCH_REGISTRY, e.g. IMDN')
    parser.add_argument(
        '--arch-opt',
        '--arch_opt',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='constructor option of the architecture (repeatable), e.g. block_type=imdb_ntire22')


def parse_arch_opts(items):
    """``['key=value', ...]`` -> dict, values parsed as YAML scalars; ValueError for an item without ``=``."""
    opts = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--arch-opt expects key=value, got "{item}".')
        key, value = item.split('=', 1)
        opts[key.strip()] = yaml.safe_load(value)
    return opts
