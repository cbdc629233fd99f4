"""Reading the pairs of a distilled set (from its files, or from bytes read elsewhere, e.g. an lmdb)."""
import io
import numpy as np

from basicsr.utils import imfrombytes
from basicsr_distill.distilled_set.layout import pair_paths


def load_pair(root, name, lq_source='float'):
    """Load one pair of a distilled set.

    Args:
        root (str): Distilled-set folder.
        name (str): Pair name.
        lq_source (str): ``'float'`` (lr_float/*.npy, exact) or ``'png'`` (lr/*.png, quantised). Default: 'float'.

    Returns:
        tuple[ndarray, ndarray]: ``(lq, gt)``, float32 RGB in [0, 1], shapes (h, w, 3) and (s*h, s*w, 3).

    Raises:
        ValueError: Unknown ``lq_source`` or an unreadable image (named).
        FileNotFoundError: A missing file.
    """
    paths = pair_paths(root, name)
    gt = read_png_rgb(paths['hr'])
    if lq_source == 'float':
        lq = read_npy_rgb(paths['lr_float'])
    elif lq_source == 'png':
        lq = read_png_rgb(paths['lr'])
    else:
        raise ValueError(f"lq_source must be 'float' or 'png', got {lq_source!r}.")
    return lq, gt


def decode_png(content, path):
    """Decode PNG bytes with BasicSR's ``imfrombytes`` to float32 BGR [0, 1] (H, W, 3).

    Raises:
        ValueError: When the bytes are missing or not an image (names ``path``).
    """
    if content is None:
        raise ValueError(f'No data for {path}.')
    img = imfrombytes(content, flag='color', float32=False)
    if img is None:
        raise ValueError(f'{path} is not a readable image.')
    return img.astype(np.float32) / 255.


def decode_npy(content, path):
    """Decode the bytes of an ``lr_float`` npy file to float32 RGB [0, 1] (H, W, 3).

    Raises:
        ValueError: When the content is not an (H, W, 3) float array (names ``path``).
    """
    if content is None:
        raise ValueError(f'No data for {path}.')
    try:
        arr = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f'{path} is not a readable npy file ({err}).') from err
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f'{path} must hold a float (H, W, 3) array, got {arr.dtype} {arr.shape}.')
    return arr.astype(np.float32, copy=False)


def read_png_rgb(path):
    """Read an 8-bit PNG as float32 RGB [0, 1] (H, W, 3)."""
    with open(path, 'rb') as f:
        return np.ascontiguousarray(decode_png(f.read(), path)[..., ::-1])


def read_npy_rgb(path):
    """Read an ``lr_float`` npy file as float32 RGB [0, 1] (H, W, 3)."""
    with open(path, 'rb') as f:
        return decode_npy(f.read(), path)
