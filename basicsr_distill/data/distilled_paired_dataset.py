import numpy as np
import os
from os import path as osp
from torch.utils import data as data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.distilled_set import (decode_npy, decode_png, lmdb_paths, pair_paths, validate_distilled_lmdb,
                                           validate_distilled_set)

# py-lmdb refuses to open one environment twice in a process (e.g. a train and a val dataset on the same set), so
# lmdb file clients are shared within a process: {backend options: (pid, FileClient)}. LMDB environments must not
# cross fork(), so a dataloader worker closes the ones it inherited and opens its own.
_LMDB_CLIENTS = {}


def _file_client(io_backend_opt):
    """FileClient for ``io_backend_opt`` (lmdb ones shared per process, see above)."""
    backend_opt = dict(io_backend_opt)
    backend = backend_opt.pop('type')
    if backend != 'lmdb':
        return FileClient(backend, **backend_opt)
    key = repr(sorted(backend_opt.items()))
    pid = os.getpid()
    entry = _LMDB_CLIENTS.get(key)
    if entry is not None and entry[0] != pid:
        for env in entry[1].client._client.values():
            env.close()  # only this process's handle; read-only without locks, so the parent is unaffected
        entry = None
    if entry is None:
        entry = _LMDB_CLIENTS[key] = (pid, FileClient(backend, **backend_opt))
    return entry[1]


@DATASET_REGISTRY.register()
class DistilledPairedDataset(data.Dataset):
    """Paired dataset reading a distilled set (see :mod:`basicsr_distill.distilled_set`).

    Behaves like BasicSR's ``PairedImageDataset`` (same outputs, crops and augmentations) but reads the pairs the
    set's ``distill.json`` lists, and by default the lossless float LR copy (``lr_float/*.npy``) instead of the
    quantised LR PNG. The set is validated at construction, so a broken folder fails at start with a message naming
    the offending file: missing files, and (disk backend) truncated files, files of another format and images whose
    size differs from the manifest's, found from the first and last bytes of each file without decoding it.

    Backends:
        disk: ``hr/<name>.png`` and ``lr_float/<name>.npy`` (``lq_source: float``, default) or ``lr/<name>.png``
            (``lq_source: png``).
        lmdb: ``root/hr.lmdb`` and ``root/lr.lmdb`` made by ``scripts/make_distilled_lmdb.py`` (keys = pair names).
            They hold PNGs only, so the LR PNG is read (``lq_source`` is then ``png``; asking for ``float`` logs a
            warning).

    Args:
        opt (dict): Config for train/val datasets. It contains the following keys:
            dataroot (str): The distilled-set folder.
            scale (int): Scale, added automatically by BasicSR from the global option; when absent, the set's scale.
            phase (str): 'train' or 'val'. Default: 'train'.
            gt_size (int): Cropped patch size for gt patches (train phase; a multiple of scale).
            use_hflip (bool): Use horizontal flips (train phase). Default: False.
            use_rot (bool): Use rotation (vertical flip and h/w transposition) (train phase). Default: False.
            io_backend (dict | str): ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb'}``.
            lq_source (str): 'float' (default) or 'png'.
            color (str): 'y' to return the Y channel only (as PairedImageDataset). Optional.
            mean (list[float]), std (list[float]): Normalisation, as PairedImageDataset. Optional.

    Returns (``__getitem__``):
        dict: ``{'lq': Tensor (3, h, w), 'gt': Tensor (3, s*h, s*w), 'lq_path': str, 'gt_path': str}``, RGB float32
        in [0, 1] (before normalisation). With lmdb the paths are the lmdb keys (pair names), as in BasicSR.

    Raises:
        FileNotFoundError: Missing ``distill.json`` or lmdb folder.
        ValueError: Invalid option, invalid set (scale mismatch, missing, truncated or resized file; see
            ``validate_distilled_set``), or, when loading, an unreadable file (named) or a pair whose GT is not
            scale x LQ (names both files).
    """

    def __init__(self, opt):
        super(DistilledPairedDataset, self).__init__()
        self.opt = opt
        if not opt.get('dataroot'):
            raise ValueError('DistilledPairedDataset needs the option "dataroot" (the distilled-set folder).')
        self.root = opt['dataroot']
        io_backend = opt.get('io_backend', {'type': 'disk'})
        self.io_backend_opt = dict({'type': io_backend} if isinstance(io_backend, str) else io_backend)
        backend = self.io_backend_opt.get('type', 'disk')
        self.io_backend_opt['type'] = backend
        self.file_client = None
        self._client_pid = None
        self.mean = opt.get('mean')
        self.std = opt.get('std')
        self.phase = opt.get('phase', 'train')
        scale = opt.get('scale')
        logger = get_root_logger()

        lq_source = opt.get('lq_source')
        if lq_source not in (None, 'float', 'png'):
            raise ValueError(f"lq_source must be 'float' or 'png', got {lq_source!r}.")
        if backend == 'lmdb':
            manifest = validate_distilled_lmdb(self.root, scale=scale)
            if lq_source == 'float':
                logger.warning(f'DistilledPairedDataset: the lmdb copies of {self.root} hold the LR PNGs only; '
                               'reading lq_source png instead of float.')
            self.lq_source = 'png'
            dbs = lmdb_paths(self.root)
            self.io_backend_opt['db_paths'] = [dbs['lr'], dbs['hr']]
            self.io_backend_opt['client_keys'] = ['lq', 'gt']
            self.paths = [{'lq_path': p['name'], 'gt_path': p['name']} for p in manifest['pairs']]
        elif backend == 'disk':
            manifest = validate_distilled_set(self.root, scale=scale, check_contents=True)
            self.lq_source = lq_source or 'float'
            lq_key = 'lr_float' if self.lq_source == 'float' else 'lr'
            self.paths = []
            for pair in manifest['pairs']:
                paths = pair_paths(self.root, pair['name'])
                self.paths.append({'lq_path': paths[lq_key], 'gt_path': paths['hr']})
        else:
            raise ValueError(f"DistilledPairedDataset supports io_backend 'disk' and 'lmdb', got {backend!r}.")
        self.scale = int(scale) if scale is not None else manifest['scale']
        if not self.paths:
            logger.warning(f'DistilledPairedDataset: {self.root} lists no pairs.')

        if self.phase == 'train':
            gt_size = opt.get('gt_size')
            if not isinstance(gt_size, int) or gt_size < self.scale or gt_size % self.scale:
                raise ValueError(f'DistilledPairedDataset (train): gt_size must be a positive multiple of the scale '
                                 f'{self.scale}, got {gt_size!r}.')
            lq_size = gt_size // self.scale
            for pair in manifest['pairs']:
                h, w = pair['lr_shape'][:2]
                if h < lq_size or w < lq_size:
                    raise ValueError(f'DistilledPairedDataset (train): pair {pair["name"]!r} of {self.root} has LR '
                                     f'size ({h}, {w}), smaller than the LR patch ({lq_size}, {lq_size}) of gt_size '
                                     f'{gt_size}; lower gt_size.')

    def _load(self, path, client_key, kind):
        content = self.file_client.get(path, client_key)
        where = path if self.file_client.backend != 'lmdb' else f'key {path!r} of {self.io_backend_opt["db_paths"]}'
        if kind == 'npy':
            return np.ascontiguousarray(decode_npy(content, where)[..., ::-1])  # RGB -> BGR, as imfrombytes
        return decode_png(content, where)

    def __getitem__(self, index):
        if self.file_client is None or self._client_pid != os.getpid():
            self.file_client = _file_client(self.io_backend_opt)
            self._client_pid = os.getpid()
        scale = self.scale

        # Load gt and lq images. Dimension order: HWC; channel order: BGR; image range: [0, 1], float32.
        gt_path = self.paths[index]['gt_path']
        lq_path = self.paths[index]['lq_path']
        img_gt = self._load(gt_path, 'gt', 'png')
        img_lq = self._load(lq_path, 'lq', 'npy' if self.lq_source == 'float' else 'png')

        h_lq, w_lq = img_lq.shape[:2]
        if img_gt.shape[:2] != (h_lq * scale, w_lq * scale):
            raise ValueError(f'GT {gt_path} has size {img_gt.shape[:2]}, which is not scale ({scale}) x the size '
                             f'{(h_lq, w_lq)} of LQ {lq_path}.')

        # augmentation for training
        if self.phase == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], scale, gt_path)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))

        # color space transform
        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]

        # BGR to RGB, HWC to CHW, numpy to tensor
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)

        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)

    def __repr__(self):
        return (f'{self.__class__.__name__}(dataroot={osp.abspath(self.root)}, pairs={len(self)}, '
                f'backend={self.io_backend_opt["type"]}, lq_source={self.lq_source}, phase={self.phase})')
