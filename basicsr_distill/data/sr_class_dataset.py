"""Class folders of HR images, the unit of work of class-wise distillation (GSDD).

``dataroot_gt`` holds class folders (OST's layout; then loose top-level images are ignored, and subfolders are not
searched recursively), or is a flat folder of images: one class named after it, or with ``pseudo_labels`` k
pseudo-classes by k-means on :func:`color_gradient_features`.
"""
import cv2
import math
import numpy as np
import os
import os.path as osp
import time
import torch
from collections import OrderedDict
from torch.utils import data as data

from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.ops.clustering import seeded_kmeans, standardize
from basicsr_distill.utils.image_io import IMG_EXTENSIONS, list_images, read_rgb, verify_image
from basicsr_distill.utils.options import check_dataset_keys

PSEUDO_LABEL_FEATURES = ('color_gradient', )
PSEUDO_LABEL_KEYS = ('num_classes', 'seed', 'feature', 'crop')
# Edges of the gradient-magnitude histogram (magnitude = Sobel 3x3 / 4, so that a unit step reads 1): log-spaced.
GRADIENT_BIN_EDGES = (0., 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, math.inf)


def color_gradient_features(img, crop=256):
    """Weight-free feature of one image for pseudo-labels, on its centred square crop of side ``min(H, W, crop)`` (not
    resized): RGB means, RGB stds, and the 8-bin histogram (:data:`GRADIENT_BIN_EDGES`, fractions of the pixels) of the
    Sobel gradient magnitude / 4 of the luma ``0.299 R + 0.587 G + 0.114 B``.

    Args:
        img (ndarray): (H, W, 3) RGB image, float in [0, 1].
        crop (int): Largest side of the centred crop. Default: 256.

    Returns:
        ndarray: (14,) float64.

    Raises:
        ValueError: ``img`` is not (H, W, 3) or ``crop`` is not positive.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'color_gradient_features expects an (H, W, 3) RGB image, got shape {img.shape}')
    if crop < 1:
        raise ValueError(f'crop must be positive, got {crop}')
    h, w = img.shape[:2]
    side = min(h, w, int(crop))
    top, left = (h - side) // 2, (w - side) // 2
    patch = img[top:top + side, left:left + side].astype(np.float64)
    flat = patch.reshape(-1, 3)
    luma = patch @ np.array([0.299, 0.587, 0.114])
    gx = cv2.Sobel(luma, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(luma, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    magnitude = np.sqrt(gx * gx + gy * gy) / 4
    hist = np.histogram(magnitude, bins=np.array(GRADIENT_BIN_EDGES))[0] / magnitude.size
    return np.concatenate([flat.mean(0), flat.std(0), hist])


def kmeans_pseudo_labels(features, num_classes, seed=0):
    """Pseudo-classes of N images by seeded k-means on their features standardised per dimension (constant ones become
    0).

    Clusters are renumbered by first member in row order, so labels do not depend on k-means' internal numbering.

    Args:
        features (ndarray): (N, D) float features, one row per image.
        num_classes (int): k, 1 <= k <= N.
        seed (int): Seed of k-means. Default: 0.

    Returns:
        ndarray: (N,) int64 labels in [0, k).

    Raises:
        ValueError: k not in [1, N], or an empty cluster (fewer than k distinct features, e.g. duplicated images).
    """
    features = np.asarray(features, dtype=np.float64)
    num = features.shape[0]
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= num:
        raise ValueError(f'pseudo_labels.num_classes must be an int in [1, {num}] (the number of usable images), '
                         f'got {num_classes!r}')
    labels = seeded_kmeans(standardize(features), int(num_classes), int(seed), n_init=10, renumber='first_seen')
    found = len(np.unique(labels))
    if found != num_classes:
        raise ValueError(f'k-means found only {found} non-empty clusters for pseudo_labels.num_classes='
                         f'{num_classes} (too few distinct images); lower num_classes')
    return labels


def _image_hw(path):
    """(H, W) of an image from its header, PNGs checked to their end."""
    return verify_image(path)


@DATASET_REGISTRY.register()
class SRClassFolderDataset(data.Dataset):
    """HR training images grouped in classes, for GSDD (:meth:`sample_class_batch`, :meth:`random_crop`).

    Images are decoded lazily; only the decoded images of the class in use are cached (LRU beyond ``cache_mb``). For
    BasicSR's dataloader item ``idx`` is a crop of image ``(idx // C) % n_c`` of class ``idx % C`` at a position seeded
    by
    ``(seed, idx)``. Images smaller than ``gt_size`` are skipped (logged); every image's header is checked at build time
    (:func:`verify_image`), and images are read with :func:`read_rgb`.

    Options (``datasets.train``; docs/Methods_GSDD.md):
        dataroot_gt (str): Folder of class folders, or a flat folder of images.
        gt_size (int): HR crop size (a multiple of ``scale``).
        scale (int): From the top-level ``scale``. Default: 1.
        classes (list[str], optional): The classes to use, in this order. Default: every class, sorted.
        min_images_per_class (int): Fewer usable images in a class is an error. Default: 1.
        pseudo_labels (dict, optional): Flat folder only: ``num_classes`` (required), ``seed`` (0), ``feature``
            (``'color_gradient'``), ``crop`` (256).
        cache_mb (float): MiB for the decoded images of the class in use. Default: 2048.
        seed (int): Seed (>= 0) of the item crops. Default: 0.
        io_backend (dict): Ignored (disk).

    Attributes:
        layout (str): ``'folders'`` or ``'flat'``.
        pseudo_label_assignment (dict | None): With ``pseudo_labels``, ``{path: class name}`` of every usable image.

    Raises:
        FileNotFoundError: ``dataroot_gt`` missing, or a class (or the flat folder) without images (named).
        ValueError: An invalid or unknown option (named ``datasets.<phase>.<key>``), a class with fewer than
            ``min_images_per_class`` images of at least gt_size (named), or an image that cannot be decoded (named).
    """

    #: The keys this dataset reads (besides BasicSR's own, ``utils.options.BASICSR_DATASET_KEYS``); others are refused.
    OPTION_KEYS = ('dataroot_gt', 'gt_size', 'classes', 'min_images_per_class', 'pseudo_labels', 'cache_mb', 'seed')

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        check_dataset_keys(opt, self.OPTION_KEYS, type(self).__name__)
        logger = get_root_logger()
        self.scale = int(opt.get('scale') or 1)
        gt_size = opt.get('gt_size')
        if isinstance(gt_size, bool) or not isinstance(gt_size, (int, np.integer)) or gt_size < 1 or \
                gt_size % self.scale:
            raise ValueError(f'SRClassFolderDataset: gt_size must be a positive multiple of scale={self.scale}, got '
                             f'{gt_size!r}')
        self.gt_size = int(gt_size)
        self.min_images = int(opt.get('min_images_per_class', 1))
        if self.min_images < 1:
            raise ValueError(f'min_images_per_class must be at least 1, got {self.min_images}')
        self.seed = int(opt.get('seed', 0))
        self.cache_bytes_limit = int(float(opt.get('cache_mb', 2048)) * 2**20)
        backend = opt.get('io_backend') or {'type': 'disk'}
        if (backend if isinstance(backend, str) else backend.get('type', 'disk')) != 'disk':
            logger.warning(f'SRClassFolderDataset reads images from disk; io_backend {backend} is ignored.')

        self.root = opt.get('dataroot_gt')
        if not self.root or not osp.isdir(self.root):
            raise FileNotFoundError(f'SRClassFolderDataset: dataroot_gt {self.root} does not exist or is not a folder')
        subdirs = sorted(
            d for d in os.listdir(self.root) if not d.startswith('.') and osp.isdir(osp.join(self.root, d)))
        pseudo = opt.get('pseudo_labels')
        self.pseudo_label_assignment = None
        self.layout = 'folders' if subdirs else 'flat'
        if subdirs:
            if pseudo:
                raise ValueError(f'pseudo_labels needs a flat folder of images, but {self.root} holds class folders '
                                 f'{subdirs}')
            loose = [n for n in os.listdir(self.root) if n.lower().endswith(IMG_EXTENSIONS)]
            if loose:
                logger.warning(f'SRClassFolderDataset: {len(loose)} image(s) at the top level of {self.root} are '
                               'ignored (the subfolders are the classes).')
            names = self._select(subdirs)
            classes = OrderedDict((name, self._usable(osp.join(self.root, name), name)) for name in names)
        else:
            folder_name = osp.basename(osp.normpath(self.root))
            paths = self._usable(self.root, folder_name if not pseudo else None)
            if pseudo:
                groups = self._pseudo_classes(paths, pseudo)
            else:
                groups = OrderedDict([(folder_name, paths)])
            classes = OrderedDict((name, groups[name]) for name in self._select(list(groups)))
            for name, paths in classes.items():
                self._check_count(name, self.root, len(paths), None)

        self._names = list(classes)
        self._paths = [list(v) for v in classes.values()]
        self._class_of_path = {p: c for c, paths in enumerate(self._paths) for p in paths}
        self._max_images = max(len(v) for v in self._paths)
        self._cache_class = None
        self._cache = OrderedDict()  # path -> (H, W, 3) float32 RGB, least recently used first
        self._cache_bytes = 0
        logger.info(f'SRClassFolderDataset: {self.num_classes} classes from {self.root} (' +
                    ', '.join(f'{n}: {len(p)}' for n, p in zip(self._names, self._paths)) + ' images).')

    # ---------------------------------------------------------------------------------------------------- building
    def _select(self, available):
        """Names of the classes in use: ``classes`` (validated) or all ``available``."""
        wanted = self.opt.get('classes')
        if wanted is None:
            return list(available)
        if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)) or not wanted:
            raise ValueError(f'classes must be a non-empty list of class names, got {wanted!r}')
        wanted = [str(v) for v in wanted]
        unknown = [v for v in wanted if v not in available]
        if unknown:
            raise ValueError(f'classes {unknown} not found in {self.root}; available: {list(available)}')
        if len(set(wanted)) != len(wanted):
            raise ValueError(f'classes lists a class twice: {wanted}')
        return wanted

    def _check_count(self, name, folder, kept, skipped):
        if kept < self.min_images:
            skipped_txt = f', {skipped} smaller skipped' if skipped else ''
            raise ValueError(f'SRClassFolderDataset: class {name!r} ({folder}) has {kept} image(s) of at least '
                             f'{self.gt_size}x{self.gt_size} pixels{skipped_txt}; min_images_per_class is '
                             f'{self.min_images}.')

    def _usable(self, folder, name):
        """Sorted images of ``folder`` of at least gt_size (others skipped, logged); ``name``: the class to check."""
        paths = list_images(folder)
        kept, small = [], []
        for path in paths:
            h, w = _image_hw(path)
            (kept if h >= self.gt_size and w >= self.gt_size else small).append(path)
        if small:
            shown = ', '.join(osp.basename(p) for p in small[:10]) + (', ...' if len(small) > 10 else '')
            get_root_logger().warning(f'SRClassFolderDataset: skipped {len(small)} image(s) of {folder} smaller than '
                                      f'gt_size={self.gt_size}: {shown}')
        if name is not None:
            self._check_count(name, folder, len(kept), len(small))
        elif not kept:
            raise ValueError(f'SRClassFolderDataset: {folder} has no image of at least {self.gt_size}x{self.gt_size} '
                             f'pixels ({len(small)} smaller skipped).')
        return kept

    def _pseudo_classes(self, paths, pseudo):
        """Split ``paths`` into ``pseudo0..pseudo{k-1}`` by k-means (see :func:`kmeans_pseudo_labels`)."""
        if not isinstance(pseudo, dict):
            raise ValueError(f'pseudo_labels must be a dict with num_classes (and seed, feature, crop), got {pseudo!r}')
        unknown = sorted(set(pseudo) - set(PSEUDO_LABEL_KEYS))
        if unknown or 'num_classes' not in pseudo:
            raise ValueError(f'pseudo_labels takes the keys {list(PSEUDO_LABEL_KEYS)} (num_classes required), got '
                             f'{sorted(pseudo)}')
        feature = pseudo.get('feature', 'color_gradient')
        if feature not in PSEUDO_LABEL_FEATURES:
            raise ValueError(f'pseudo_labels.feature must be one of {list(PSEUDO_LABEL_FEATURES)}, got {feature!r}')
        num_classes = pseudo['num_classes']
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= len(paths):
            raise ValueError(f'pseudo_labels.num_classes must be an int in [1, {len(paths)}] (the usable images of '
                             f'{self.root}), got {num_classes!r}')
        start = time.monotonic()
        crop = int(pseudo.get('crop', 256))
        features = np.stack([color_gradient_features(read_rgb(p), crop) for p in paths])
        labels = kmeans_pseudo_labels(features, num_classes, int(pseudo.get('seed', 0)))
        groups = OrderedDict((f'pseudo{k}', [p for p, v in zip(paths, labels) if v == k]) for k in range(num_classes))
        self.pseudo_label_assignment = {p: f'pseudo{v}' for p, v in zip(paths, labels.tolist())}
        sizes = ', '.join(f'{n}: {len(v)}' for n, v in groups.items())
        get_root_logger().info(f'SRClassFolderDataset: {len(paths)} images of {self.root} in {num_classes} '
                               f'pseudo-classes ({feature} features, k-means seed {pseudo.get("seed", 0)}) in '
                               f'{time.monotonic() - start:.1f} s: {sizes}')
        return groups

    # --------------------------------------------------------------------------------------------------------- API
    @property
    def num_classes(self):
        """int: Number of classes in use."""
        return len(self._names)

    @property
    def class_names(self):
        """list[str]: Class names, in class-index order."""
        return list(self._names)

    @property
    def cached_class(self):
        """int | None: The class whose decoded images are cached."""
        return self._cache_class

    @property
    def num_cached_images(self):
        """int: Number of decoded images in the cache."""
        return len(self._cache)

    def _check_class(self, c):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < self.num_classes:
            raise IndexError(f'class index {c!r} out of range [0, {self.num_classes})')
        return int(c)

    def images_of(self, c):
        """Image paths of class ``c`` in [0, num_classes) (a copy, sorted within a class folder); IndexError out of
        range."""
        return list(self._paths[self._check_class(c)])

    def class_of(self, path):
        """Class index of an image path of the dataset; KeyError if it is not one of the classes in use."""
        try:
            return self._class_of_path[path]
        except KeyError:
            raise KeyError(f'{path} is not an image of {self!r}') from None

    def _image(self, c, path):
        """Decoded image ``path`` of class ``c`` through the one-class LRU cache."""
        if self._cache_class != c:
            self._cache.clear()
            self._cache_bytes = 0
            self._cache_class = c
        img = self._cache.get(path)
        if img is not None:
            self._cache.move_to_end(path)
            return img
        img = self._decode(path)
        self._cache[path] = img
        self._cache_bytes += img.nbytes
        while self._cache_bytes > self.cache_bytes_limit and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return img

    def _decode(self, path):
        img = read_rgb(path)
        if img.shape[0] < self.gt_size or img.shape[1] < self.gt_size:
            raise ValueError(f'{path} decodes to size {img.shape[:2]}, smaller than gt_size={self.gt_size} (its '
                             'header said otherwise)')
        return img

    def _crop(self, img, uy, ux):
        """gt_size crop of ``img`` at the position given by two uniforms in [0, 1)."""
        gt = self.gt_size
        top = min(int(uy * (img.shape[0] - gt + 1)), img.shape[0] - gt)
        left = min(int(ux * (img.shape[1] - gt + 1)), img.shape[1] - gt)
        return img[top:top + gt, left:left + gt], top, left

    @staticmethod
    def _check_generator(generator):
        if not isinstance(generator, torch.Generator):
            raise TypeError(f'generator must be a torch.Generator (the global RNG is never used), got '
                            f'{type(generator).__name__}')

    def sample_class_batch(self, c, batch_size, generator, return_info=False):
        """``batch_size`` crops of images of class ``c`` drawn uniformly with replacement, each at a uniform position.

        Only ``generator`` is drawn from (image indices, then (B, 2) float64 positions), so its state fixes the batch.

        Args:
            c (int): Class index in [0, num_classes).
            batch_size (int): B >= 1.
            generator (torch.Generator): The random source (the batch is on the CPU).
            return_info (bool): Also return ``[{'gt_path', 'top', 'left'}]``. Default: False.

        Returns:
            Tensor | tuple: (B, 3, gt_size, gt_size) float32 RGB in [0, 1]; with ``return_info``, ``(batch, info)``.

        Raises:
            IndexError: ``c`` out of range.
            TypeError: ``generator`` is not a torch.Generator.
            ValueError: ``batch_size`` < 1, or an image cannot be decoded (named).
        """
        c = self._check_class(c)
        self._check_generator(generator)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
        paths = self._paths[c]
        picks = torch.randint(len(paths), (int(batch_size), ), generator=generator, device=generator.device).tolist()
        uniforms = torch.rand((int(batch_size), 2), generator=generator, device=generator.device,
                              dtype=torch.float64).tolist()
        crops, info = [], []
        for pick, (uy, ux) in zip(picks, uniforms):
            crop, top, left = self._crop(self._image(c, paths[pick]), uy, ux)
            crops.append(crop)
            info.append({'gt_path': paths[pick], 'top': top, 'left': left})
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        return (batch, info) if return_info else batch

    def random_crop(self, path, generator, return_info=False):
        """One uniformly placed crop of image ``path`` (one draw of 2 float64 from ``generator``; its class becomes the
        cached one).

        Returns:
            Tensor | tuple: (3, gt_size, gt_size) float32 RGB in [0, 1]; with ``return_info``, ``(crop, {'gt_path',
                'top',
            'left'})``.

        Raises:
            KeyError: ``path`` is not an image of the dataset.
            TypeError: ``generator`` is not a torch.Generator.
        """
        c = self.class_of(path)
        self._check_generator(generator)
        uy, ux = torch.rand(2, generator=generator, device=generator.device, dtype=torch.float64).tolist()
        crop, top, left = self._crop(self._image(c, path), uy, ux)
        out = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        return (out, {'gt_path': path, 'top': top, 'left': left}) if return_info else out

    # ------------------------------------------------------------------------------------------ BasicSR dataloader
    def __len__(self):
        return self.num_classes * self._max_images

    def __getitem__(self, index):
        """Class-balanced item: ``{'gt': (3, gt_size, gt_size) float32 RGB [0, 1], 'class', 'class_name',
        'gt_path'}``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        c = index % self.num_classes
        paths = self._paths[c]
        path = paths[(index // self.num_classes) % len(paths)]
        # the cache only if it holds this class: interleaved classes would empty it at every item
        img = self._cache.get(path) if self._cache_class == c else None
        img = self._decode(path) if img is None else img
        uy, ux = np.random.default_rng((self.seed, index)).random(2).tolist()
        crop = self._crop(img, uy, ux)[0]
        gt = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        return {'gt': gt, 'class': c, 'class_name': self._names[c], 'gt_path': path}

    def __repr__(self):
        return (f'{self.__class__.__name__}(dataroot_gt={osp.abspath(self.root)}, classes={self.num_classes}, '
                f'images={sum(len(v) for v in self._paths)}, gt_size={self.gt_size})')
