"""high_band_share on arrays whose spectrum is known by hand."""
import numpy as np
import pytest

from basicsr_distill.utils.spectrum import high_band_share


def test_cosines_fall_on_the_side_of_the_band_their_frequency_says():
    yy, xx = np.mgrid[0:16, 0:16]
    assert high_band_share(np.cos(2 * np.pi * xx / 8)) == pytest.approx(0.0, abs=1e-12)  # 1/8 cycle per pixel
    assert high_band_share(np.cos(np.pi * (xx + yy))) == pytest.approx(1.0)  # the checkerboard: Nyquist
    # half the energy at 1/8 (low), half at 3/8 (high), in each of 3 channels
    mixed = np.cos(2 * np.pi * xx / 8) + np.cos(2 * np.pi * 3 * yy / 8)
    assert high_band_share(np.stack([mixed] * 3, axis=2)) == pytest.approx(0.5)
    assert high_band_share(np.zeros((4, 4))) == 0.0


def test_white_noise_spreads_over_the_plane():
    noise = np.random.default_rng(0).standard_normal((256, 256))
    assert high_band_share(noise) == pytest.approx(0.75, abs=0.01)  # 1 - (2 x 0.25)^2 of the plane
    assert high_band_share(noise, cutoff=0.125) == pytest.approx(1 - 0.25**2, abs=0.01)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='expects an'):
        high_band_share(np.zeros(5))
    with pytest.raises(ValueError, match='cutoff'):
        high_band_share(np.zeros((4, 4)), cutoff=0.5)
