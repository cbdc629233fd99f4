"""Training images as instances: every HR image is one unit of work of instance-level distillation (IDC)."""
import os.path as osp
import torch
from torch.utils import data as data

from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.data.image_io import list_images, read_rgb, verify_image
from basicsr_distill.data.sr_patches import bicubic_lr, cut_patch_pairs, lr_patch_grid, modcrop


@DATASET_REGISTRY.register()
class SRInstanceDataset(data.Dataset):
    """HR training images, each an instance of aligned HR / bicubic-LR patches.

    Used by ``IDCModel``: BasicSR's train loop only drives the iterations (an item is a tiny tick, so the
    dataloader costs nothing); the model asks :meth:`load_instance` for the patches of the instance that
    ``current_iter`` falls in. Instances therefore run one after another whatever the sampler order, and a resumed
    run continues in the same instance.

    Options (``datasets.train``):
        dataroot_gt (str): folder of HR images (png/jpg/bmp/tif).
        meta_info_file (str, optional): restrict to the names in its first column.
        scale (int): injected by BasicSR from the top-level ``scale``.
        gt_size (int): HR patch size; the LR patch is gt_size / scale. Must be a multiple of scale.
        stride (int): HR stride between patches (multiple of scale). Default: gt_size // 2.
        min_patches (int): images giving fewer patches are skipped (logged). Default: 1.

    Every image is checked when the dataset is built (:func:`~basicsr_distill.data.sr_patches.verify_image`: the
    header, and PNGs walked to their end without decoding), so a file that is not an image or a truncated PNG stops
    the run before any instance is computed; a truncated JPEG is found when its instance is decoded.

    Raises:
        FileNotFoundError: empty or missing folder (named).
        ValueError: gt_size / stride not multiples of scale, an image that cannot be read (named).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
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
        """Patches of instance ``index``.

        Returns:
            dict: ``lq`` (N, 3, gt/s, gt/s) and ``gt`` (N, 3, gt, gt) float32 tensors in [0, 1] (RGB), ``coords``
            (list of HR top-left (y, x)), ``name``, ``path``, ``hr_shape`` ((H, W) of the file as decoded, before
            the crop to a multiple of the scale that the patches are cut from).

        Raises:
            ValueError: naming the image if it cannot be read.
        """
        path = self.paths[index]
        img = read_rgb(path)
        hr = modcrop(img, self.scale)
        lr = bicubic_lr(hr, self.scale)
        gt, lq, coords = cut_patch_pairs(hr, lr, self.scale, self.gt_size, self.stride)
        return {
            'lq': torch.from_numpy(lq).permute(0, 3, 1, 2).contiguous(),
            'gt': torch.from_numpy(gt).permute(0, 3, 1, 2).contiguous(),
            'coords': coords,
            'name': self.names[index],
            'path': path,
            'hr_shape': tuple(img.shape[:2]),
        }
