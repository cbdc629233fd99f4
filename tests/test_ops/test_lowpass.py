"""The low-pass projection of IDC's ``distill.update_lowpass`` against hand-computed values."""
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.ops.lowpass import lowpass_update


def test_a_one_pixel_checkerboard_is_removed_and_a_constant_kept():
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing='ij')
    checker = ((yy + xx) % 2).float()[None, None] * 2 - 1  # +-1, zero mean on every 2 x 2 cell
    torch.testing.assert_close(lowpass_update(checker, 2), torch.zeros(1, 1, 8, 8))
    const = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(lowpass_update(const, 4), const)


def test_cell_means_interpolated_bilinearly_by_hand():
    # columns 1 1 3 3 (each row): 2 x 2 cell means 1 | 3; bilinear x2 (align_corners=False) samples the coarse grid at
    # x = -0.25, 0.25, 0.75, 1.25: 1 (edge), 0.75 * 1 + 0.25 * 3 = 1.5, 0.25 * 1 + 0.75 * 3 = 2.5, 3 (edge)
    delta = torch.tensor([1., 1., 3., 3.]).repeat(4, 1)[None, None]
    expected = torch.tensor([1., 1.5, 2.5, 3.]).repeat(4, 1)[None, None]
    torch.testing.assert_close(lowpass_update(delta, 2), expected)
    # one cell over the whole patch: its mean everywhere
    torch.testing.assert_close(lowpass_update(delta, 4), torch.full((1, 1, 4, 4), 2.))
    assert lowpass_update(delta, 1) is delta


@pytest.mark.parametrize('factor', [0, 3])
def test_bad_cell_sizes_are_refused(factor):
    with pytest.raises(ValueError, match='cell size'):
        lowpass_update(torch.zeros(1, 1, 8, 8), factor)
