"""Training images as instances: every HR image is one unit of work of instance-level distillation (IDC)."""
import numpy as np
import os.path as osp
import torch
from torch.utils import data as data

from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.data.sr_patches import bicubic_lr, cut_patch_pairs, lr_patch_grid, modcrop
from basicsr_distill.utils.image_io import list_images, read_rgb, verify_image
from basicsr_distill.utils.options import check_dataset_keys


@DATASET_REGISTRY.register()
class SRInstanceDataset(data.Dataset):
    """HR training images, each an IDC instance of aligned HR / bicubic-LR patches (:meth:`load_instance`).

    An item is only a tick of BasicSR's loop; ``IDCModel`` loads the instance ``current_iter`` falls in, so instances
    run in order whatever the sampler. Every image's header is checked at build time (:func:`verify_image`); images
    smaller than one patch are warned of once and give no patch (never resized).

    Options (``datasets.train``):
        dataroot_gt (str): Folder of HR images.
        meta_info_file (str, optional): Only the names in its first column.
        scale (int): From the top-level ``scale``.
        gt_size (int): HR patch size, a multiple of scale (LR: gt_size / scale).
        stride (int): HR stride, a multiple of scale. Default: gt_size // 2.

    Raises:
        FileNotFoundError: An empty or missing folder (named).
        ValueError: gt_size / stride not multiples of scale, an unreadable image (named), an unknown key (named
            ``datasets.<phase>.<key>``).
    """

    #: The keys this dataset reads (besides BasicSR's own, ``utils.options.BASICSR_DATASET_KEYS``).
    OPTION_KEYS = ('dataroot_gt', 'meta_info_file', 'gt_size', 'stride')

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        check_dataset_keys(opt, self.OPTION_KEYS, type(self).__name__)
        self.scale = int(opt['scale'])
        self.gt_size = int(opt['gt_size'])
        self.stride = int(opt.get('stride', self.gt_size // 2))
        for key, value in (('gt_size', self.gt_size), ('stride', self.stride)):
            if value <= 0 or value % self.scale:
                raise ValueError(f'datasets.train.{key}={value} must be a positive multiple of scale={self.scale}')
        self.paths = list_images(opt['dataroot_gt'], opt.get('meta_info_file'))
        # before any work: headers, and PNGs walked to their end (no decoding); (H, W) of every image
        self.hr_shapes = [verify_image(path) for path in self.paths]
        self.names = [osp.splitext(osp.basename(p))[0] for p in self.paths]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f'image names in {opt["dataroot_gt"]} are not unique without extension')
        small = [(p, hw) for i, (p, hw) in enumerate(zip(self.paths, self.hr_shapes)) if not self.num_patches(i)]
        if small:
            shown = ', '.join(f'{osp.basename(p)} {hw}' for p, hw in small[:10]) + (', ...' if len(small) > 10 else '')
            get_root_logger().warning(f'SRInstanceDataset: {len(small)} image(s) of {opt["dataroot_gt"]} smaller than '
                                      f'one {self.gt_size}x{self.gt_size} patch give no pair (recorded as empty '
                                      f'units): {shown}')

    @property
    def num_instances(self):
        """Number of training images (one IDC instance each)."""
        return len(self.paths)

    def num_patches(self, index):
        """Number of patch pairs of instance ``index`` (from its header size; no decoding)."""
        h, w = self.hr_shapes[index]
        ys, xs = lr_patch_grid(h // self.scale, w // self.scale, self.scale, self.gt_size, self.stride)
        return len(ys) * len(xs)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return {'tick': index}

    def load_instance(self, index):
        """Patches of instance ``index``: ``lq`` (N, 3, gt/s, gt/s) and ``gt`` (N, 3, gt, gt) float32 RGB in [0, 1],
        ``coords`` (HR top-left (y, x)), ``name``, ``path``, ``hr_shape`` ((H, W) as decoded, before the mod-crop).

        Raises:
            ValueError: The image cannot be read (named).
        """
        path = self.paths[index]
        img = read_rgb(path)
        hr = modcrop(img, self.scale)
        ys, xs = lr_patch_grid(hr.shape[0] // self.scale, hr.shape[1] // self.scale, self.scale, self.gt_size,
                               self.stride)
        # no patch: never resized (BasicSR's imresize fails on sides under a few pixels, e.g. 1x1, 4x4, 7x300)
        lr = bicubic_lr(hr, self.scale) if ys and xs else np.zeros(
            (hr.shape[0] // self.scale, hr.shape[1] // self.scale, 3), np.float32)
        gt, lq, coords = cut_patch_pairs(hr, lr, self.scale, self.gt_size, self.stride)
        return {
            'lq': torch.from_numpy(lq).permute(0, 3, 1, 2).contiguous(),
            'gt': torch.from_numpy(gt).permute(0, 3, 1, 2).contiguous(),
            'coords': coords,
            'name': self.names[index],
            'path': path,
            'hr_shape': tuple(img.shape[:2]),
        }
