"""Coreset / pruning baselines (basicsr_distill.selection) and scripts/select_subset.py.

Each rule is checked on a small hand-made example whose answer is worked out by hand in the comments, then the CLI
runs once per method on 3 real T91 images and its output must validate as a distilled set.
"""
import importlib.util
import json
import logging
import numpy as np
import os
import os.path as osp
import pytest
import torch
from conftest import REPO, copy_images, data_path, write_option_file
from torch import nn as nn

from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
from basicsr_distill.distilled_set import validate_distilled_set
from basicsr_distill.ops.psnr_bic import psnr_bic_batch, select_lowest_psnr_bic
from basicsr_distill.selection import (patch_features, random_feature_network, select_dcsr, select_herding,
                                       select_kcenter, select_psnr_bic, texture_complexity, texture_features)
from basicsr_distill.selection.psnr_bic_selection import select_psnr_bic_lowest, select_psnr_bic_threshold
from basicsr_distill.selection.random_selection import select_random

POINTS_1D = np.array([0., 1., 2., 3., 10.])


# --------------------------------------------------------------------------------------------------------- herding
def test_herding_order_1d():
    # mean mu = 16 / 5 = 3.2; step k picks the x closest to t_k = k mu - (sum of the chosen):
    #   k=1: t = 3.2            -> 3  (|3.2 - 3| = 0.2)                              index 3
    #   k=2: t = 6.4 - 3 = 3.4  -> 2  (1.4; 0: 3.4, 1: 2.4, 10: 6.6)                  index 2
    #   k=3: t = 9.6 - 5 = 4.6  -> 1  (3.6; 0: 4.6, 10: 5.4)                          index 1
    #   k=4: t = 12.8 - 6 = 6.8 -> 10 (3.2; 0: 6.8)                                   index 4
    #   k=5: the last one, 0                                                          index 0
    assert select_herding(POINTS_1D, 5) == [3, 2, 1, 4, 0]
    assert select_herding(POINTS_1D[:, None], 2) == [3, 2]  # (N, 1) is the same as (N,)
    assert select_herding(torch.from_numpy(POINTS_1D), 3) == [3, 2, 1]  # tensors are accepted


def test_herding_order_2d_ties_lowest_index():
    # (0, 1), (1, 0), (-1, 0), (0, -1): mean (0, 0).
    #   k=1: t = (0, 0): all four at distance 1, tie -> lowest index 0 (0, 1)
    #   k=2: t = 2 mu - (0, 1) = (0, -1) -> index 3 exactly
    #   k=3: t = 3 mu - (0, 0) = (0, 0): (1, 0) and (-1, 0) tie at 1 -> index 1
    #   k=4: index 2
    points = np.array([[0., 1.], [1., 0.], [-1., 0.], [0., -1.]])
    assert select_herding(points, 4) == [0, 3, 1, 2]


def test_herding_errors():
    with pytest.raises(ValueError, match='cannot select 6 of 5'):
        select_herding(POINTS_1D, 6)
    with pytest.raises(ValueError, match='cannot select 0'):
        select_herding(POINTS_1D, 0)
    with pytest.raises(ValueError, match='NaN or infinite'):
        select_herding(np.array([0., np.nan]), 1)


# -------------------------------------------------------------------------------------------------------- k-center
def test_kcenter_farthest_point_1d():
    # start 'mean': mu = 3.2, closest point 3 (index 3). Distances to the chosen set then:
    #   {3}:      0:3, 1:2, 2:1, 10:7      -> 10 (index 4)
    #   {3, 10}:  0:3, 1:2, 2:1            -> 0  (index 0)
    #   {3,10,0}: 1:1, 2:1 (tie)           -> 1  (index 1), then 2 (index 2)
    assert select_kcenter(POINTS_1D, 5) == [3, 4, 0, 1, 2]


def test_kcenter_farthest_point_2d_ties_and_duplicates():
    # corners (0,0) (4,0) (0,4) (4,4), centre (2,2), (1,1); mean (11/6, 11/6): closest is (2,2) (index 4).
    # Every corner is at sqrt(8) from (2,2): tie -> (0,0) (index 0). Then (4,0), (0,4), (4,4) are all at sqrt(8)
    # from the set and (1,1) at sqrt(2): index 1, then 2, then 3 (ties each time), and (1,1) last.
    points = np.array([[0., 0.], [4., 0.], [0., 4.], [4., 4.], [2., 2.], [1., 1.]])
    assert select_kcenter(points, 6) == [4, 0, 1, 2, 3, 5]
    # duplicates: (0), (0), (1): start 0 (closest to 1/3), farthest 2, then the duplicate at distance 0
    assert select_kcenter(np.array([0., 0., 1.]), 3) == [0, 2, 1]


def test_kcenter_random_start_is_seeded():
    for seed in range(4):
        first = int(torch.randint(5, (1, ), generator=torch.Generator().manual_seed(seed)).item())
        order = select_kcenter(POINTS_1D, 3, start='random', seed=seed)
        assert order[0] == first and order == select_kcenter(POINTS_1D, 3, start='random', seed=seed)
        # then the farthest point: 10 (index 4) unless the start is 10 itself, then 0 (index 0)
        assert order[1] == (0 if first == 4 else 4)
    with pytest.raises(ValueError, match='start must be one of'):
        select_kcenter(POINTS_1D, 2, start='first')


# ------------------------------------------------------------------------------------------------------------ DCSR
def _stripes(direction, phase, size=16):
    """Gray 0.1 / 0.9 stripes of period 4 along y ('h'), x ('v') or x + y ('d'), shifted by ``phase``."""
    y, x = np.mgrid[:size, :size]
    coord = {'h': y, 'v': x, 'd': x + y}[direction]
    value = np.where((coord + phase) % 4 < 2, 0.9, 0.1)
    return np.repeat(value[..., None], 3, axis=2)


def _ramp(slope, size=16):
    value = 0.3 + slope * np.mgrid[:size, :size][1]
    return np.repeat(value[..., None], 3, axis=2)


@pytest.fixture(scope='module')
def texture_pool():
    """12 smooth ramps (indices 0-11, increasing slope) and 12 striped patches: 8 horizontal (12-19), 2 vertical
    (20, 21) and 2 diagonal (22, 23)."""
    smooth = [_ramp(0.001 * (k + 1)) for k in range(12)]
    textured = [_stripes('h', k % 4) for k in range(8)] + [_stripes('v', k) for k in range(2)] + \
        [_stripes('d', k) for k in range(2)]
    return np.stack(smooth + textured).astype(np.float32)


def test_dcsr_texture_measures(texture_pool):
    complexity = texture_complexity(texture_pool)
    assert texture_complexity(np.full((1, 8, 8), 0.5))[0] == 0  # flat patch
    assert np.all(np.diff(complexity[:12]) > 0)  # steeper ramps are more complex
    assert complexity[:12].max() < complexity[12:].min()  # every striped patch beats every ramp
    feats = texture_features(texture_pool)
    assert feats.shape == (24, 17)
    np.testing.assert_allclose(feats[:, :8].sum(1), 1)  # magnitude histogram: fractions of the pixels
    np.testing.assert_allclose(feats[12:, 8:].sum(1), 1)  # orientation histogram: weights sum to 1
    # dominant orientation: horizontal stripes vary along y -> 90 deg (bin (90 + 10) // 20 = 5), vertical -> 0 deg,
    # diagonal (x + y) -> 45 deg (bin 2)
    assert [int(np.argmax(f[8:])) for f in feats[[12, 20, 22]]] == [5, 0, 2]
    with pytest.raises(ValueError, match=r'\(N, H, W, 3\) RGB or \(N, H, W\) luma'):
        texture_complexity(np.zeros((2, 8, 8, 4)))


def test_dcsr_above_median_and_even_per_cluster(texture_pool):
    # 24 complexities: the 12 ramps below the 12 stripes, so the median lies between the groups and exactly the 12
    # striped patches are kept (strictly above). k-means with 3 clusters separates their orientations: clusters of
    # 8 (horizontal), 2 and 2. Even sampling (round-robin) then gives:
    #   n=6: 2 + 2 + 2 (proportional sampling would give 4 + 1 + 1)
    #   n=7: the small clusters are exhausted after 2 rounds, the rest comes from the large one: 3 + 2 + 2
    #   n=10: 6 + 2 + 2
    horizontal = set(range(12, 20))
    for num, large in ((6, 2), (7, 3), (10, 6)):
        order, info = select_dcsr(texture_pool, num, num_clusters=3, seed=0, return_info=True)
        assert len(order) == len(set(order)) == num
        assert set(order) <= set(range(12, 24)) and info['num_filled'] == 0
        np.testing.assert_array_equal(info['kept'], np.arange(24) >= 12)
        assert np.all(info['complexity'][order] > info['median'])
        labels = info['labels']
        assert np.all(labels[:12] == -1)
        groups = [set(labels[list(g)].tolist()) for g in (range(12, 20), (20, 21), (22, 23))]
        assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3  # the three texture groups
        assert len(set(order) & horizontal) == large
        assert sorted(info['per_cluster']) == [2, 2, large]
    # seeded: the same seed gives the same patches, in the same order
    assert select_dcsr(texture_pool, 7, num_clusters=3, seed=5) == select_dcsr(texture_pool, 7, num_clusters=3, seed=5)


@pytest.fixture
def basicsr_log():
    """Messages of BasicSR's root logger ('basicsr', which does not propagate to pytest's caplog)."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_dcsr_fills_from_below_median_by_complexity(texture_pool, basicsr_log):
    # 12 = the kept half: all of it, no clustering needed
    order, info = select_dcsr(texture_pool, 12, num_clusters=3, return_info=True)
    assert order == list(range(12, 24)) and info['num_filled'] == 0 and info['num_clusters'] == 0
    assert not any('DCSR' in m for m in basicsr_log)
    # 15 > 12 kept: all 12 stripes, then the 3 most complex ramps (slopes 0.012, 0.011, 0.010: indices 11, 10, 9)
    order, info = select_dcsr(texture_pool, 15, num_clusters=3, return_info=True)
    assert order == list(range(12, 24)) + [11, 10, 9]
    assert info['num_filled'] == 3 and info['num_clusters'] == 0
    assert any('3 of the 15 requested are filled' in m for m in basicsr_log)


def test_dcsr_round_robin_on_real_clusters_is_even():
    # 40 random-texture patches, 15 clusters (the paper's): every cluster gives at most one more than any other
    # non-exhausted one
    rng = np.random.default_rng(0)
    amp = rng.uniform(0.05, 0.5, size=(40, 1, 1, 1))
    patches = np.clip(0.5 + amp * rng.standard_normal((40, 12, 12, 3)), 0, 1)
    order, info = select_dcsr(patches, 17, seed=1, return_info=True)
    sizes = np.bincount(info['labels'][info['kept']], minlength=info['num_clusters'])
    quota = max(info['per_cluster'])
    assert info['num_clusters'] == 15 and len(order) == 17
    assert all(c == s or c >= quota - 1 for c, s in zip(info['per_cluster'], sizes))


# -------------------------------------------------------------------------------------------------------- PSNR_bic
def test_psnr_bic_lowest_first_smooth_vs_noisy(basicsr_log):
    # bicubic x4 round trip: a 1-pixel checkerboard is lost completely (lowest PSNR_bic), strong noise loses more
    # than weak noise, a smooth ramp is almost exact and a constant patch is exact (inf). Indices are scrambled.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:16, :16]
    checker = np.repeat(((x + y) % 2).astype(np.float64)[..., None], 3, axis=2)
    strong = np.clip(0.5 + 0.3 * rng.standard_normal((16, 16, 3)), 0, 1)
    weak = np.clip(0.5 + 0.03 * rng.standard_normal((16, 16, 3)), 0, 1)
    ramp = _ramp(0.02)
    const = np.full((16, 16, 3), 0.5)
    patches = np.stack([ramp, strong, const, checker, weak])  # indices 0 .. 4
    expected = [3, 1, 4, 0, 2]  # checker, strong noise, weak noise, ramp, constant
    scores = psnr_bic_batch(patches, 4)
    assert list(np.argsort(scores)) == expected and np.isinf(scores[2])
    assert select_psnr_bic_lowest(patches, 5) == expected
    assert any('the 3 next-lowest are taken' in m for m in basicsr_log)  # 5 > the 2 below the median
    basicsr_log.clear()
    order, info = select_psnr_bic_lowest(patches, 2, return_info=True)
    assert order == [3, 1]
    assert info['num_above_median'] == 0 and info['below_median'].tolist() == [False, True, False, True, False]
    # three requested, only two strictly below the median (the weak noise patch): the next lowest is taken
    assert not basicsr_log
    assert select_psnr_bic_lowest(patches, 3, return_info=True)[1]['num_above_median'] == 1
    assert any('the 1 next-lowest are taken' in m for m in basicsr_log)
    # ties: lowest index first; inf last
    assert select_lowest_psnr_bic(np.array([20., np.inf, 10., 20., 10.]), 4) == [2, 4, 0, 3]
    # Threshold Crop Select on the same patches: strictly below the median (the weak noise patch) are the
    # checkerboard and the strong noise, so a budget of 2 takes both and 3 is refused
    order, info = select_psnr_bic(patches, 2, return_info=True)
    assert order == [1, 3] and info['num_kept'] == 2 and info['threshold'] == scores[4]
    np.testing.assert_array_equal(info['psnr_bic'], scores)
    with pytest.raises(ValueError, match='only 2 of 5 are below the threshold'):
        select_psnr_bic(patches, 3)


# hand-made PSNR_bic values (dB): sorted 10, 12, 18, 22, 22.5 | 25, 27, 30, 40, inf -> median (22.5 + 25) / 2 = 23.75
HAND_SCORES = np.array([30., 18., 25., np.inf, 12., 22., 40., 22.5, 10., 27.])
HAND_KEPT = [1, 4, 5, 7, 8]  # 18, 12, 22, 22.5, 10: strictly below 23.75


def test_psnr_bic_threshold_keeps_strictly_below_the_median():
    order, info = select_psnr_bic_threshold(HAND_SCORES, 5, return_info=True)
    assert info['threshold'] == 23.75 and info['num_kept'] == 5
    assert np.flatnonzero(info['kept']).tolist() == HAND_KEPT and order == HAND_KEPT
    with pytest.raises(ValueError, match='6 patches requested but only 5 of 10 are below the threshold 23.75 dB'):
        select_psnr_bic_threshold(HAND_SCORES, 6)
    # a threshold in dB (the reference code's 23 keeps the same five; 20 keeps 18, 12 and 10)
    assert select_psnr_bic_threshold(HAND_SCORES, 5, threshold=23) == HAND_KEPT
    assert select_psnr_bic_threshold(HAND_SCORES, 3, threshold=20.) == [1, 4, 8]
    # a patch exactly at the threshold is not kept: 22 is not below 22
    assert select_psnr_bic_threshold(HAND_SCORES, 3, threshold=22) == [1, 4, 8]
    # more than half the patches exact (inf): the median is inf and every finite patch is kept
    assert select_psnr_bic_threshold(np.array([np.inf, 3., np.inf, np.inf]), 1) == [1]
    for bad in ('mean', None, True, float('nan')):
        with pytest.raises(ValueError, match='threshold must be'):
            select_psnr_bic_threshold(HAND_SCORES, 2, threshold=bad)
    with pytest.raises(ValueError, match='without NaN'):
        select_psnr_bic_threshold(np.array([1., np.nan]), 1)


def test_psnr_bic_threshold_draws_uniformly_among_the_kept():
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    draws = [select_psnr_bic_threshold(HAND_SCORES, 2, seed=seed) for seed in range(2000)]
    # seeded, and the draw is select_random's over the kept positions (sorted indices)
    assert draws[7] == select_psnr_bic_threshold(HAND_SCORES, 2, seed=7)
    assert draws[7] == sorted(HAND_KEPT[i] for i in select_random(5, 2, 7))
    assert all(set(d) <= set(HAND_KEPT) and len(set(d)) == 2 and d == sorted(d) for d in draws)
    # uniform: each kept patch is drawn with probability 2 / 5 (800 of 2000; 5 sigma = 110), each of the 10 pairs
    # with probability 1 / 10 (200 of 2000; 5 sigma = 67)
    counts = np.bincount(np.concatenate(draws), minlength=10)
    assert all(abs(counts[i] - 800) < 110 for i in HAND_KEPT) and counts.sum() == 4000
    pairs = {}
    for d in draws:
        pairs[tuple(d)] = pairs.get(tuple(d), 0) + 1
    assert len(pairs) == 10 and all(abs(c - 200) < 67 for c in pairs.values())
    # the global RNGs are not used
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_psnr_bic_lowest_unchanged_on_hand_scores():
    # the lowest-n variant: lowest first, past the median when asked for more than the 5 below it
    assert select_lowest_psnr_bic(HAND_SCORES, 5) == [8, 4, 1, 5, 7]
    order, info = select_lowest_psnr_bic(HAND_SCORES, 7, return_info=True)
    assert order == [8, 4, 1, 5, 7, 2, 9] and info['median'] == 23.75 and info['num_above_median'] == 2


# -------------------------------------------------------------------------------------------------------- features
class _TinyTeacher(nn.Module):

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 5, 3, 1, 1)
        self.tail = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        return self.tail(self.body(x))


def test_patch_features(one_thread):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 24, 24, generator=gen)
    teacher = _TinyTeacher().eval()
    feats = patch_features(x, 'teacher', net=teacher, layer='body', batch_size=4)
    np.testing.assert_allclose(feats, teacher.body(x).mean(dim=(2, 3)).double().detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='needs the teacher'):
        patch_features(x, 'teacher')
    # random: 24x24 patches -> pool 3 -> one 512-vector; seeded, batch-independent (instance norm)
    rand = patch_features(x, 'random', generator=torch.Generator().manual_seed(1))
    assert rand.shape == (6, 512)
    net = random_feature_network((24, 24), torch.Generator().manual_seed(1))
    np.testing.assert_allclose(patch_features(x, 'random', net=net, batch_size=1), rand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(patch_features(x, 'random', generator=torch.Generator().manual_seed(2)), rand)


# ------------------------------------------------------------------------------------------------------------- CLI
def _load_cli():
    spec = importlib.util.spec_from_file_location('select_subset', osp.join(REPO, 'scripts', 'select_subset.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def three_image_options(tmp_path_factory):
    """An idc_demo.yml-style option file (96 / 24 patches, stride 48, IMDN teacher) on 3 T91 images."""
    root = tmp_path_factory.mktemp('select_subset')
    hr = root / 'hr'
    copy_images(hr, ['t1.png', 't10.png', 't12.png'])
    opt = {
        'name': 'select_subset_test',
        'model_type': 'IDCModel',
        'scale': 4,
        'datasets': {
            'train': {
                'name': 't91_3',
                'type': 'SRInstanceDataset',
                'dataroot_gt': str(hr),
                'gt_size': 96,
                'stride': 48
            }
        },
        'network_t': {
            'type': 'IMDN',
            'block_type': 'imdb_ntire22',
            'upscale': 4
        },
        'path': {
            'pretrain_network_t': data_path('weights', 'imdn_baseline.pth'),
            'param_key_t': 'auto',
            'strict_load_t': True
        },
        'distill': {
            'feature_layer': None
        },
    }
    return write_option_file(opt, root / 'opt.yml'), root


CLI_CASES = [
    ('random', ['--num_pairs', '6']),
    ('herding', ['--num_pairs', '6', '--features', 'teacher']),
    ('kcenter', ['--ratio', '0.2', '--features', 'random', '--seed', '3']),
    ('dcsr', ['--num_pairs', '6', '--num_clusters', '3']),
    ('psnr_bic', ['--num_pairs', '6']),
    ('psnr_bic_lowest', ['--num_pairs', '6']),
]


@pytest.mark.parametrize('method,extra', CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_writes_a_valid_set(method, extra, three_image_options, tmp_path, capsys, one_thread):
    opt_path, _ = three_image_options
    out = str(tmp_path / method)
    _load_cli().main(['-opt', opt_path, '--out', out, '--method', method, *extra])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pool = printed['pool']
    num = round(0.2 * pool) if '--ratio' in extra else 6
    manifest = validate_distilled_set(out, scale=4, require_complete=True)
    assert manifest['method'] == method and manifest['num_pairs'] == num == printed['num_pairs']
    assert manifest['size_control'] == {'num_pairs': num, 'r': num / pool}
    assert manifest['source']['num_images'] == 3 and manifest['source']['num_patches'] == pool
    options = manifest['options']
    assert options['selection'] == method and options['seed'] == (3 if method == 'kcenter' else 0)
    if method in ('herding', 'kcenter'):
        assert options['features'] == ('teacher' if method == 'herding' else 'random')
    for pair in manifest['pairs']:
        assert pair['hr_shape'] == [96, 96, 3] and pair['lr_shape'] == [24, 24, 3]
    if method.startswith('psnr_bic'):  # psnr_bic: 6 drawn below the median; psnr_bic_lowest: the pool's lowest
        source = SRInstanceDataset({
            'dataroot_gt': manifest['source']['folder'],
            'scale': 4,
            'gt_size': 96,
            'stride': 48
        })
        scores = np.concatenate(
            [psnr_bic_batch(source.load_instance(i)['gt'].permute(0, 2, 3, 1).numpy(), 4) for i in range(3)])
        written = sorted(p['psnr_bic'] for p in manifest['pairs'])
        if method == 'psnr_bic_lowest':
            np.testing.assert_allclose(written, np.sort(scores)[:num])
        else:
            assert options['psnr_bic_threshold'] == 'median' and max(written) < np.median(scores)
            np.testing.assert_allclose(written, np.sort(scores[select_psnr_bic_threshold(scores, num, seed=0)]))
            assert not np.allclose(written, np.sort(scores)[:num])  # not simply the lowest


@pytest.mark.parametrize('ratio', ['0', '-0.1', '1.5', 'nan'])
def test_cli_ratio_outside_0_1_is_refused_before_anything_is_written(ratio, three_image_options, tmp_path):
    """--ratio 0 and --ratio -0.1 used to write one pair (max(1, round(r P)))."""
    opt_path, _ = three_image_options
    out = tmp_path / 'out'
    with pytest.raises(
            ValueError,
            match=rf'ratio \(--ratio\) must be a fraction of the pool in \(0, 1\], got '
            rf'{float(ratio)}\. Nothing was written'):
        _load_cli().main(['-opt', opt_path, '--out', str(out), '--ratio', ratio])
    assert not out.exists()


@pytest.mark.parametrize('where, how', [('hr', 'is'), ('hr/subset', 'is inside'), ('.', 'contains')])
def test_cli_out_in_the_training_image_folder_is_refused_before_anything_is_written(where, how, three_image_options):
    """--out equal to the training image folder used to write the set among the source images."""
    opt_path, root = three_image_options
    before = sorted(os.listdir(root)), sorted(os.listdir(root / 'hr'))
    out = osp.normpath(str(root / where))
    with pytest.raises(
            ValueError,
            match=rf'out \(--out\) {out} {how} the training image folder {root / "hr"} '
            r'\(datasets.train.dataroot_gt of the option file\)'):
        _load_cli().main(['-opt', opt_path, '--out', out, '--num_pairs', '2'])
    assert (sorted(os.listdir(root)), sorted(os.listdir(root / 'hr'))) == before
