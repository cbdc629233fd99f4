"""image_io: listing (extensions, meta-info order, errors), read_rgb's conversions on hand-made images and a real
bundled one, and the evaluation's BGR reader built on it."""
import cv2
import numpy as np
import os.path as osp
import pytest
from conftest import REPO

from basicsr_distill.data import sr_patches
from basicsr_distill.utils import image_io, sr_eval
from basicsr_distill.utils.image_io import IMG_EXTENSIONS, list_images, read_rgb, verify_image

TT1 = osp.join(REPO, 'datasets', 'demo', 'train_hr', 'tt1.png')


def _hand_made(rows=5, cols=7):
    """(rows, cols, 3) uint8 BGR with distinct channels: B = 10 i, G = 10 j + 1, R = 255 - 10 i - j."""
    i, j = np.mgrid[:rows, :cols]
    return np.stack([10 * i, 10 * j + 1, 255 - 10 * i - j], axis=2).astype(np.uint8)


def test_list_images_sorted_by_extension_with_meta_info_and_errors(tmp_path):
    img = _hand_made()
    for name in ('b.png', 'A.JPG', 'c.bmp', 'd.ppm'):
        cv2.imwrite(str(tmp_path / name), img)
    (tmp_path / 'notes.txt').write_text('not an image')
    (tmp_path / 'sub').mkdir()  # not searched
    names = [osp.basename(p) for p in list_images(str(tmp_path))]
    assert names == ['A.JPG', 'b.png', 'c.bmp']  # sorted by name; upper-case extensions count
    assert list_images(str(tmp_path))[0] == osp.join(str(tmp_path), 'A.JPG')  # full paths
    assert '.ppm' not in IMG_EXTENSIONS
    assert [osp.basename(p) for p in list_images(str(tmp_path), extensions=('.ppm', ))] == ['d.ppm']

    meta = tmp_path / 'meta_info.txt'
    meta.write_text('c.bmp (5,7,3)\n\nb.png (5,7,3)\n')
    assert list_images(str(tmp_path), str(meta)) == [osp.join(str(tmp_path), n) for n in ('c.bmp', 'b.png')]

    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f'no image found in {empty}'):
        list_images(str(empty))
    assert list_images(str(empty), allow_empty=True) == []
    with pytest.raises(FileNotFoundError, match=f'image folder {tmp_path / "nowhere"} does not exist'):
        list_images(str(tmp_path / 'nowhere'), allow_empty=True)


def test_read_rgb_conversions_of_hand_made_images(tmp_path):
    bgr = _hand_made()
    rgb = bgr[..., ::-1].astype(np.float32) / 255.
    cv2.imwrite(str(tmp_path / 'color.png'), bgr)
    out = read_rgb(str(tmp_path / 'color.png'))
    assert out.shape == (5, 7, 3) and out.dtype == np.float32 and out.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(out, rgb)  # BGR on disk -> RGB, / 255 exactly
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), bgr[..., ::-1])  # 8 bits back exactly

    cv2.imwrite(str(tmp_path / 'gray.png'), bgr[..., 0])
    gray = read_rgb(str(tmp_path / 'gray.png'))
    np.testing.assert_array_equal(gray, np.repeat(bgr[..., :1].astype(np.float32) / 255., 3, axis=2))

    bgra = np.concatenate([bgr, np.zeros_like(bgr[..., :1])], axis=2)  # fully transparent: colours kept
    cv2.imwrite(str(tmp_path / 'alpha.png'), bgra)
    np.testing.assert_array_equal(read_rgb(str(tmp_path / 'alpha.png')), rgb)

    bgr16 = bgr.astype(np.uint16) * 257  # 8-bit v -> 16-bit 257 v: the same value in [0, 1]
    cv2.imwrite(str(tmp_path / 'deep.png'), bgr16)
    np.testing.assert_allclose(read_rgb(str(tmp_path / 'deep.png')), rgb, rtol=0, atol=1e-7)

    (tmp_path / 'fake.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='cannot read image .*fake.png'):
        read_rgb(str(tmp_path / 'fake.png'))


def test_read_rgb_of_a_real_bundled_image():
    img = read_rgb(TT1)
    bgr8 = cv2.imread(TT1, cv2.IMREAD_COLOR)
    assert img.shape == bgr8.shape and img.dtype == np.float32 and 0 <= img.min() < img.max() <= 1
    np.testing.assert_array_equal(img, bgr8[..., ::-1].astype(np.float32) / 255.)
    assert verify_image(TT1) == img.shape[:2]


def test_the_evaluation_reads_bgr_through_read_rgb(tmp_path):
    img = sr_eval.read_image(TT1)
    assert img.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(img, read_rgb(TT1)[..., ::-1])  # BGR for BasicSR's metrics
    np.testing.assert_array_equal(img, cv2.imread(TT1, cv2.IMREAD_COLOR).astype(np.float32) / 255.)
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(FileNotFoundError, match='Cannot read image ".*broken.png"'):
        sr_eval.read_image(str(tmp_path / 'broken.png'))

    cv2.imwrite(str(tmp_path / 'b.ppm'), _hand_made())
    cv2.imwrite(str(tmp_path / 'a.png'), _hand_made())
    assert sr_eval.list_images(str(tmp_path)) == ['a.png', 'b.ppm', 'broken.png']  # names; PPM too
    with pytest.raises(FileNotFoundError, match='Image folder not found'):
        sr_eval.list_images(str(tmp_path / 'nowhere'))


def test_images_have_one_reader():
    for name in ('IMG_EXTENSIONS', 'list_images', 'read_rgb', 'verify_image'):
        assert callable(getattr(image_io, name)) or name == 'IMG_EXTENSIONS'
        assert not hasattr(sr_patches, name)
