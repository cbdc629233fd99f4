import numpy as np
import os
from os import path as osp
from torch.utils import data as data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.distilled_set import (LMDB_SOURCE_NAME, MANIFEST_NAME, PAIR_HASH_KEY, VERIFY_MODES,
                                           check_pixel_values, check_sha256, decode_npy, decode_png, incomplete_problem,
                                           lmdb_hashes, lmdb_paths, pair_paths, validate_distilled_lmdb,
                                           validate_distilled_set, verification_message, verify_distilled_lmdb,
                                           verify_distilled_set)
from basicsr_distill.utils.options import check_dataset_keys

# py-lmdb refuses to open one environment twice in a process (e.g. a train and a val dataset on the same set), so
# lmdb file clients are shared within a process: {backend options: (pid, FileClient)}. LMDB environments must not
# cross fork(), so a dataloader worker closes the ones it inherited and opens its own.
_LMDB_CLIENTS = {}


def _file_client(io_backend_opt):
    """FileClient for ``io_backend_opt`` (lmdb ones shared per process)."""
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
    """BasicSR's ``PairedImageDataset`` (same outputs, crops and augmentations) on a distilled set: the pairs its
    ``distill.json`` lists, by default with the lossless float LR (``lr_float/*.npy``).

    The set is validated at construction (docs/DistilledSetFormat.md): ``verify: quick`` finds missing, truncated,
    foreign-format and resized files from their first and last bytes; ``verify: full`` also checks every file against
    its recorded SHA-256 and decodes it, then checks each file read in training against its hash. Every image read must
    hold finite values in [0, 1]. Backends: disk (``hr/``, ``lr_float/`` or ``lr/``) or lmdb (``hr.lmdb``, ``lr.lmdb``
    of ``scripts/make_distilled_lmdb.py``, PNG only, so ``lq_source`` becomes ``png`` with a warning).

    Args:
        opt (dict): The dataset options:
            dataroot (str): The distilled-set folder.
            scale (int): From the global option; when absent, the set's scale.
            phase (str): 'train' or 'val'. Default: 'train'.
            gt_size (int): GT crop size (train; a multiple of scale).
            use_hflip (bool), use_rot (bool): Augmentations (train). Default: False.
            io_backend (dict | str): ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb'}``.
            lq_source (str): 'float' (default) or 'png'.
            color (str): 'y' for the Y channel only. Optional.
            mean (list[float]), std (list[float]): Normalisation. Optional.
            verify (str): 'quick' (default) or 'full'.
            allow_incomplete (bool): Train on a set whose run has not finished (``complete: false``), with a warning.
                Default: False.

    Returns (``__getitem__``):
        dict: ``{'lq': (3, h, w), 'gt': (3, s*h, s*w), 'lq_path', 'gt_path'}``, RGB float32 in [0, 1] before
        normalisation (lmdb: paths are the keys).

    Raises:
        FileNotFoundError: Missing ``distill.json`` or lmdb folder.
        ValueError: An invalid or unknown option (named ``datasets.<phase>.<key>``), an unfinished set without
            ``allow_incomplete`` (names its distill.json), an invalid set (``validate_distilled_set``; with ``full``
            changed or undecodable files, all named); when loading, an unreadable file, values not finite or outside
            [0, 1], a GT not scale x LQ, or (``full``) a SHA-256 mismatch, naming the file(s).
    """

    #: The keys this dataset reads (besides BasicSR's own, ``utils.options.BASICSR_DATASET_KEYS``); others are refused.
    OPTION_KEYS = ('dataroot', 'gt_size', 'use_hflip', 'use_rot', 'lq_source', 'color', 'mean', 'std', 'verify',
                   'allow_incomplete')

    def __init__(self, opt):
        super(DistilledPairedDataset, self).__init__()
        self.opt = opt
        check_dataset_keys(opt, self.OPTION_KEYS, type(self).__name__)
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
        self.verify = opt.get('verify') or 'quick'
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"DistilledPairedDataset: the option verify must be 'quick' (default: headers, sizes and "
                             "ends of the files at start-up) or 'full' (every file's SHA-256 and decoding at start-up, "
                             f'the SHA-256 of every file read in training), got {self.verify!r}.')
        full = self.verify == 'full'
        allow_incomplete = opt.get('allow_incomplete', False)
        if not isinstance(allow_incomplete, bool):
            raise ValueError(f'DistilledPairedDataset: the option allow_incomplete must be true or false (train on a '
                             f'set whose run has not finished), got {allow_incomplete!r}.')
        if backend == 'lmdb':
            manifest = validate_distilled_lmdb(self.root, scale=scale)
            if lq_source == 'float':
                logger.warning(f'DistilledPairedDataset: the lmdb copies of {self.root} hold the LR PNGs only; '
                               'reading lq_source png instead of float.')
            self.lq_source = 'png'
            dbs = lmdb_paths(self.root)
            self.io_backend_opt['db_paths'] = [dbs['lr'], dbs['hr']]
            self.io_backend_opt['client_keys'] = ['lq', 'gt']
            hashes = lmdb_hashes(self.root) if full else {'hr': {}, 'lr': {}}
            self.paths = [{
                'lq_path': p['name'],
                'gt_path': p['name'],
                'lq_sha256': hashes['lr'].get(p['name']),
                'gt_sha256': hashes['hr'].get(p['name'])
            } for p in manifest['pairs']]
            if full:
                client = _file_client(self.io_backend_opt)  # the process's shared environments (opened once)
                keys = {'hr': 'gt', 'lr': 'lq'}
                report = verify_distilled_lmdb(
                    self.root, manifest, read=lambda kind, name: client.get(name, keys[kind]))
                if report['problems']:
                    raise ValueError(verification_message(report))
                if report['unhashed']:
                    logger.info(f'DistilledPairedDataset: {report["unhashed"]} lmdb value(s) of {self.root} have no '
                                'recorded SHA-256 (lmdb made before hashes were recorded): decoded only; rebuild the '
                                'lmdb copies with scripts/make_distilled_lmdb.py to record them.')
        elif backend == 'disk':
            if full:  # every problem at once instead of the quick check's first one
                manifest = validate_distilled_set(self.root, scale=scale, check_files=False)
                report = verify_distilled_set(self.root, lmdb=False)
                if report['problems']:
                    raise ValueError(verification_message(report))
            else:
                manifest = validate_distilled_set(self.root, scale=scale, check_contents=True)
            self.lq_source = lq_source or 'float'
            lq_key = 'lr_float' if self.lq_source == 'float' else 'lr'
            self.paths = []
            for pair in manifest['pairs']:
                paths = pair_paths(self.root, pair['name'])
                hashes = pair.get(PAIR_HASH_KEY, {}) if full else {}
                self.paths.append({
                    'lq_path': paths[lq_key],
                    'gt_path': paths['hr'],
                    'lq_sha256': hashes.get(lq_key),
                    'gt_sha256': hashes.get('hr')
                })
        else:
            raise ValueError(f"DistilledPairedDataset supports io_backend 'disk' and 'lmdb', got {backend!r}.")
        self.scale = int(scale) if scale is not None else manifest['scale']
        unfinished = incomplete_problem(self.root, manifest)
        if unfinished and not allow_incomplete:
            raise ValueError(
                f'DistilledPairedDataset: {unfinished}. Finish the run first (rerun it with '
                '--auto_resume: finished units are kept), or set allow_incomplete: true in this dataset\'s '
                'options to train on the pairs written so far.')
        if unfinished:
            logger.warning(f'DistilledPairedDataset: {unfinished}; training on these pairs (allow_incomplete: true).')
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

    def _load(self, path, client_key, kind, sha256=None):
        content = self.file_client.get(path, client_key)
        if self.file_client.backend == 'lmdb':
            db_path = self.io_backend_opt['db_paths'][self.io_backend_opt['client_keys'].index(client_key)]
            where, record = f'key {path!r} of {db_path}', osp.join(db_path, LMDB_SOURCE_NAME)
        else:
            where, record = path, osp.join(self.root, MANIFEST_NAME)
        if sha256 is not None and content is not None:  # verify: full
            check_sha256(content, sha256, where, record)
        if kind == 'npy':
            img = np.ascontiguousarray(decode_npy(content, where)[..., ::-1])  # RGB -> BGR, as imfrombytes
        else:
            img = decode_png(content, where)
        return check_pixel_values(img, where)  # whatever verify says: a NaN / Inf / out-of-range pair never trains

    def __getitem__(self, index):
        if self.file_client is None or self._client_pid != os.getpid():
            self.file_client = _file_client(self.io_backend_opt)
            self._client_pid = os.getpid()
        scale = self.scale

        # Load gt and lq images. Dimension order: HWC; channel order: BGR; image range: [0, 1], float32.
        entry = self.paths[index]
        gt_path, lq_path = entry['gt_path'], entry['lq_path']
        img_gt = self._load(gt_path, 'gt', 'png', entry['gt_sha256'])
        img_lq = self._load(lq_path, 'lq', 'npy' if self.lq_source == 'float' else 'png', entry['lq_sha256'])

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
                f'backend={self.io_backend_opt["type"]}, lq_source={self.lq_source}, phase={self.phase}, '
                f'verify={self.verify})')
