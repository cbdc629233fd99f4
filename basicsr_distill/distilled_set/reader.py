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
        tuple[ndarray, ndarray]: ``(lq, gt)``, float32 RGB in [0, 1], (h, w, 3) and (s*h, s*w, 3).

    Raises:
        ValueError: Unknown ``lq_source`` or an unreadable image (named).
        FileNotFoundError: A missing file.
    """
    paths = pair_paths(root, name)
    gt = check_pixel_values(read_png_rgb(paths['hr']), paths['hr'])
    if lq_source == 'float':
        lq = check_pixel_values(read_npy_rgb(paths['lr_float']), paths['lr_float'])
    elif lq_source == 'png':
        lq = check_pixel_values(read_png_rgb(paths['lr']), paths['lr'])
    else:
        raise ValueError(f"lq_source must be 'float' or 'png', got {lq_source!r}.")
    return lq, gt


def check_pixel_values(img, where):
    """Return ``img`` (float (H, W, C)) if finite and in [0, 1], as the writer stores; done on every read of a pair.

    Raises:
        ValueError: Naming ``where`` (the file or lmdb key), the NaN / infinite count, the finite range, what to do.
    """
    if img.size == 0:
        return img
    low, high = img.min(), img.max()
    if low >= 0 and high <= 1:  # False for a NaN (it propagates into min and max)
        return img
    finite = np.isfinite(img)
    bad = int(img.size - np.count_nonzero(finite))
    values = img[finite]
    span = f'finite values in [{values.min():.6g}, {values.max():.6g}]' if values.size else 'no finite value'
    raise ValueError(f'{where}: a distilled pair must hold finite values in [0, 1], this file holds {bad} NaN or '
                     f'infinite value(s) of {img.size} and {span}: it is damaged or was not written by '
                     'DistilledSetWriter (training on it would give a NaN loss). Restore it from a copy or write the '
                     'set again; scripts/verify_distilled.py lists every bad file of the set.')


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
