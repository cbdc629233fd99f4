"""The one owner of listing and reading image files: :func:`list_images`, :func:`read_rgb` (float32 RGB in [0, 1],
(H, W, 3)) and :func:`verify_image` (a cheap header / PNG-chunk check before expensive work). Callers that need
BGR flip with ``img[..., ::-1]``.
"""
import cv2
import numpy as np
import os
import os.path as osp
from PIL import Image

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def list_images(folder, meta_info_file=None, extensions=IMG_EXTENSIONS, allow_empty=False):
    """Sorted paths of the images directly inside ``folder``, or those named in the first column of ``meta_info_file``
    (relative to ``folder``, in the file's order, extensions not checked).

    Args:
        folder (str): The folder (not searched recursively).
        meta_info_file (str | None): A BasicSR meta-info file. Default: None.
        extensions (tuple[str]): Lower-case endings that count as images. Default: :data:`IMG_EXTENSIONS`.
        allow_empty (bool): Return ``[]`` for a folder without images instead of raising. Default: False.

    Raises:
        FileNotFoundError: The folder does not exist, or (unless ``allow_empty``) holds no image.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder {folder} does not exist')
    if meta_info_file:
        with open(meta_info_file) as f:
            names = [line.split()[0] for line in f if line.strip()]
        paths = [osp.join(folder, n) for n in names]
    else:
        paths = [osp.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(tuple(extensions))]
    if not paths and not allow_empty:
        raise FileNotFoundError(f'no image found in {folder}')
    return paths


def _jpeg_truncation(path):
    """Why the JPEG ``path`` is truncated or corrupt (PIL draft decode), or None."""
    try:
        with Image.open(path) as img:
            img.draft('RGB', (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Image.DecompressionBombError:
        return None  # too large for PIL's default limit: not evidence of corruption
    except (OSError, SyntaxError, ValueError) as err:
        text = str(err)  # other failures (a JPEG variant PIL cannot decode) are left to OpenCV
        return text if 'truncated' in text or 'broken data stream' in text else None
    return None


def read_rgb(path):
    """Read an image as C-contiguous (H, W, 3) float32 RGB in [0, 1].

    Grayscale is replicated, alpha dropped (not composited), palettes expanded; 16-bit is scaled by 1/65535, 8-bit by
    1/255 (``np.round(img * 255)`` gives the samples back). EXIF orientation is not applied.

    Raises:
        ValueError: Naming the file: missing, not an image, truncated or corrupt (truncated JPEGs found with PIL), or
            float / signed samples.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, truncated or not an image)')
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'image {path} has {img.dtype} samples; only 8-bit and 16-bit images are supported')
    with open(path, 'rb') as f:
        is_jpeg = f.read(3) == b'\xff\xd8\xff'
    if is_jpeg:
        problem = _jpeg_truncation(path)
        if problem:
            raise ValueError(f'cannot read image {path}: truncated or corrupt JPEG ({problem})')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return (img[:, :, ::-1].astype(np.float32) / scale).copy()


def verify_image(path):
    """(H, W) from the header of an image, checked without decoding pixels: PIL parses the header and PNGs are walked to
    their end (CRCs checked). Truncated JPEGs are found only by :func:`read_rgb`; a file PIL cannot parse is decoded.

    Raises:
        ValueError: Naming the file: not an image, a truncated or corrupt PNG, or a TIFF of float, signed or 32-bit
            samples.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == 'PNG':
                img.verify()
            sample_type = _tiff_sample_type(img) if img.format == 'TIFF' else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return read_rgb(path).shape[:2]  # PIL cannot parse or verify it: OpenCV decides (raises naming the file)
    if sample_type is not None:  # as read_rgb refuses it, from the header
        raise ValueError(f'image {path} has {sample_type} samples; only 8-bit and 16-bit images are supported')
    return h, w


def _tiff_sample_type(img):
    """The TIFF sample type :func:`read_rgb` refuses (e.g. ``float32``), from the header, or None."""
    tags = img.tag_v2
    formats, bits = tags.get(339, (1, )), tags.get(258, (8, ))
    formats = formats if isinstance(formats, tuple) else (formats, )
    bits = bits if isinstance(bits, tuple) else (bits, )
    kind = {1: 'uint', 2: 'int', 3: 'float'}.get(max(formats), 'unknown')
    if kind != 'uint' or max(bits) > 16:
        return f'{kind}{max(bits)}'
    return None
