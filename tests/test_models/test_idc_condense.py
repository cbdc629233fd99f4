"""IDC options that make x_hat move and match (issue: condensation that shows): L_pair re-matching and the exclusion
of a patch's own source, re-drawn RLFF channels / NCFD frequencies, the displacement figures in ``distill.json``."""
import numpy as np
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import IDC_T as T
from conftest import REPO, build_distill_model, idc_distill_opt, idc_images, straight_and_restarted

from basicsr_distill.distilled_set import read_manifest
from basicsr_distill.models import idc_model
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.ops.grouping import nearest_real_in_group


def test_nearest_real_in_group_on_hand_made_features_with_and_without_the_source():
    # 4 real local patches (1 sample of 1 channel each): values 0, 1, 5, 6; owners (real LR patches) 0, 0, 1, 1;
    # groups 0, 0, 0, 1. Synthetic patches: 0.2 (group 0, source 0) and 5.9 (group 1, source 1).
    local_real = torch.tensor([0., 1., 5., 6.]).reshape(4, 1, 1)
    labels = torch.tensor([0, 0, 0, 1])
    owner = torch.tensor([0, 0, 1, 1])
    local_syn = torch.tensor([0.2, 5.9]).reshape(2, 1, 1)
    assigned, ids, exclude = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1])
    assert nearest_real_in_group(local_syn, local_real, labels, assigned, ids).tolist() == [0, 3]
    # source 0 excluded: the nearest real patch of group 0 not from real LR patch 0 is value 5 (index 2);
    # group 1 holds only patches of source 1: the exclusion is dropped there (index 3)
    assert nearest_real_in_group(local_syn, local_real, labels, assigned, ids, exclude, owner).tolist() == [2, 3]


@pytest.mark.parametrize('mode', ['assignment', 'round', 'step'])
def test_pair_rematch_pairs_the_patches_each_mode_names(tmp_path, monkeypatch, mode):
    # T = 6, warm-up 2, rounds at steps 3 and 5 (test_idc_model's schedule); instance t20: n = 2 synthetic patches
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), pair_rematch=mode, pair_exclude_source=True)
    model = build_distill_model(IDCModel, opt)
    calls = []
    original = idc_model.nearest_real_in_group

    def record(local_syn, local_real, labels_real, assigned, patch_ids, exclude=None, real_owner=None):
        calls.append((model.units[0].index, sorted(patch_ids.tolist()),
                      sorted(torch.nonzero(assigned >= 0).squeeze(1).tolist()), exclude is not None))
        out = original(local_syn, local_real, labels_real, assigned, patch_ids, exclude, real_owner)
        # the nearest real local patch of the same group, not one of the patch's own source real LR patch
        inst = model.units[0]
        for s, r in zip(patch_ids.tolist(), out.tolist()):
            assert labels_real[r] == assigned[s]
            members = torch.nonzero((labels_real == assigned[s]) & (real_owner != exclude[s])).squeeze(1)
            if members.numel():
                d = (local_real[members].flatten(1) - local_syn[s].detach().flatten()).norm(dim=1)
                assert int(real_owner[r]) != int(inst.syn_owner[s])
                assert torch.isclose(d.min(), (local_real[r].flatten() - local_syn[s].detach().flatten()).norm())
        return out

    monkeypatch.setattr(idc_model, 'nearest_real_in_group', record)
    for it in range(1, T + 1):
        model.optimize_parameters(it)
    first = [c for c in calls if c[0] == calls[0][0]]
    assert all(c[3] for c in first)  # the exclusion is passed
    if mode == 'assignment':  # the newly assigned patches, at the two rounds
        assert len(first) == 2 and first[0][1] == first[0][2] and set(first[1][1]).isdisjoint(first[0][1])
    elif mode == 'round':  # every assigned patch at each round
        assert len(first) == 2 and all(c[1] == c[2] for c in first)
    else:  # every assigned patch at every step after the first round (steps 3..6)
        assert len(first) == T - 2 and all(c[1] == c[2] for c in first)


def test_redraws_come_from_the_instance_generator_and_resume_is_byte_identical(tmp_path, monkeypatch):
    hr = idc_images(tmp_path)
    opt = idc_distill_opt(tmp_path / 'x', hr, redraw_every=2)
    model = build_distill_model(IDCModel, opt)
    model.optimize_parameters(1)
    inst = model.units[0]
    channels, freqs = inst.rlff.channels.clone(), inst.bank.freqs.clone()
    model.optimize_parameters(2)
    assert torch.equal(inst.rlff.channels, channels)
    model.optimize_parameters(3)  # step 3: (3 - 1) % 2 == 0, re-drawn
    assert not torch.equal(inst.rlff.channels, channels) and not torch.equal(inst.bank.freqs, freqs)
    assert inst.redraw_state is not None
    # stopped after step 4 (after the re-draw at 3, before the one at 5), resumed: the same pairs, byte for byte
    straight_and_restarted(
        lambda o: build_distill_model(IDCModel, o),
        idc_distill_opt(tmp_path / 'a', hr, redraw_every=2),
        idc_distill_opt(tmp_path / 'b', hr, redraw_every=2),
        total=T,
        stop=4)
    ra, rb = (str(tmp_path / d / 'distilled') for d in 'ab')
    name = read_manifest(ra)['pairs'][0]['name']
    a, b = (np.load(osp.join(r, 'lr_float', f'{name}.npy')) for r in (ra, rb))
    assert np.array_equal(a, b)
    # and the same run again gives the same values (seeded per instance, not by the global RNG)
    torch.manual_seed(123)
    straight_and_restarted(
        lambda o: build_distill_model(IDCModel, o),
        idc_distill_opt(tmp_path / 'c', hr, redraw_every=2),
        idc_distill_opt(tmp_path / 'd', hr, redraw_every=2),
        total=T,
        stop=2)
    assert np.array_equal(np.load(osp.join(str(tmp_path / 'c' / 'distilled'), 'lr_float', f'{name}.npy')), a)


def test_distill_json_records_how_far_x_hat_moved_and_the_final_l_ins(tmp_path):
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), init='real')
    opt['train']['total_iter'] = 3 * T
    model = build_distill_model(IDCModel, opt)
    for it in range(1, 3 * T + 1):
        model.optimize_parameters(it)
    root = opt['path']['distilled_root']
    manifest = read_manifest(root)
    assert manifest['complete']
    for pair in manifest['pairs']:
        lr = np.load(osp.join(root, 'lr_float', f'{pair["name"]}.npy'))
        assert pair['x_hat_mad'] > 0 and np.isfinite(pair['final_l_ins']) and pair['final_l_ins'] > 0
        assert lr.min() >= 0 and lr.max() <= 1
    mads = [p['x_hat_mad'] for p in manifest['pairs']]
    summary = manifest['summary']
    assert summary['num_pairs'] == len(mads) and np.isclose(summary['x_hat_mad_mean'], np.mean(mads))
    assert summary['x_hat_mad_max'] == max(mads) and summary['x_hat_mad_mean'] < 6 * 0.01  # at most T x lr


def _hand_made_instance():
    """Four 16 x 16 HR patches (x4: 4 x 4 LR) whose PSNR_bic order is known by construction: a constant (the round
    trip is exact: inf), a horizontal ramp (smooth: high), 4-pixel stripes (partly lost) and a 1-pixel checkerboard
    (a x4 bicubic round trip loses all of it: the lowest)."""
    yy, xx = np.mgrid[0:16, 0:16]
    const = np.full((16, 16), 0.5)
    ramp = 0.2 + 0.6 * xx / 15
    stripes = ((xx // 4) % 2).astype(np.float64)
    checker = ((yy + xx) % 2).astype(np.float64)
    gt = torch.from_numpy(np.stack([const, ramp, stripes, checker])).float()[:, None].repeat(1, 3, 1, 1)
    lq = torch.nn.functional.avg_pool2d(gt, 4)  # only their number and identity matter here
    return lq, gt


def test_init_psnr_bic_lowest_takes_the_patches_a_bicubic_round_trip_loses_most():
    from basicsr_distill.ops.psnr_bic import psnr_bic_batch
    lq, gt = _hand_made_instance()
    scores = psnr_bic_batch(gt.permute(0, 2, 3, 1).double().numpy(), scale=4)
    assert np.isinf(scores[0]) and scores[3] < scores[2] < scores[1]  # the order built in
    ids, x0 = idc_model.initial_x_hat(lq, 0.5, 'psnr_bic_lowest', torch.Generator().manual_seed(0), gt, 4)
    assert ids.tolist() == [3, 2]  # n = round(0.5 x 4) = 2, lowest first
    torch.testing.assert_close(x0, lq[[3, 2]])
    ids, _ = idc_model.initial_x_hat(lq, 0.25, 'psnr_bic_lowest', torch.Generator().manual_seed(5), gt, 4)
    assert ids.tolist() == [3]  # no draw: the same patch whatever the generator


def test_init_psnr_bic_draws_from_the_lower_half_with_the_instance_generator():
    lq, gt = _hand_made_instance()
    picks = [
        int(idc_model.initial_x_hat(lq, 0.25, 'psnr_bic',
                                    torch.Generator().manual_seed(s), gt, 4)[0]) for s in range(40)
    ]
    assert set(picks) == {2, 3}  # the ceil(4 / 2) = 2 lowest, both drawn, never the constant or the ramp
    again = [
        int(idc_model.initial_x_hat(lq, 0.25, 'psnr_bic',
                                    torch.Generator().manual_seed(s), gt, 4)[0]) for s in range(40)
    ]
    assert again == picks  # seeded: reruns start from the same patches
    ids, _ = idc_model.initial_x_hat(lq, 0.75, 'psnr_bic', torch.Generator().manual_seed(0), gt, 4)
    assert sorted(ids.tolist()) == [1, 2, 3]  # n = 3 > half: the 3 lowest


def test_init_psnr_bic_errors_name_the_option():
    lq, gt = _hand_made_instance()
    with pytest.raises(ValueError, match=r"distill.init 'psnr_bic' needs the HR patches"):
        idc_model.initial_x_hat(lq, 0.5, 'psnr_bic', torch.Generator(), None)
    with pytest.raises(ValueError, match=r'distill.init must be one of'):
        idc_model.initial_x_hat(lq, 0.5, 'bogus', torch.Generator(), gt)


def test_init_psnr_bic_runs_and_records_its_start(tmp_path):
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), init='psnr_bic')
    model = build_distill_model(IDCModel, opt)
    inst = model.start_unit(0, None)
    data = model.source.load_instance(0)
    from basicsr_distill.ops.psnr_bic import psnr_bic_batch
    scores = psnr_bic_batch(data['gt'].permute(0, 2, 3, 1).double().numpy(), scale=4)
    lower = set(np.argsort(scores, kind='stable')[:max(inst.n_syn, -(-len(scores) // 2))].tolist())
    assert set(inst.init_ids.tolist()) <= lower
    torch.testing.assert_close(inst.x_hat.detach(), data['lq'][inst.init_ids])


def test_update_lowpass_keeps_the_change_of_x_hat_in_the_coarse_interpolants(tmp_path):
    # LR patches 8 x 8 (gt_size 32, x4), s = 4: every step's change is a bilinear interpolant of a 2 x 2 grid, so the
    # whole displacement x_hat - x0 is one too wherever the clamp to [0, 1] did not act
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), update_lowpass=4)
    model = build_distill_model(IDCModel, opt)
    for it in range(1, T):
        model.optimize_parameters(it)
    inst = model.units[0]
    delta = (inst.x_hat.detach() - inst.x0).double()
    assert delta.abs().max() > 0
    basis = torch.eye(4, dtype=torch.float64).reshape(4, 1, 1, 2, 2)
    up = torch.stack([
        torch.nn.functional.interpolate(b, size=(8, 8), mode='bilinear', align_corners=False)[0, 0] for b in basis
    ]).reshape(4, 64).T  # (64, 4): the interpolants of the 2 x 2 grid
    interior = ((inst.x_hat > 0) & (inst.x_hat < 1)).all(dim=(1, 2, 3))
    assert interior.any()
    flat = delta[interior].reshape(-1, 64).T
    coef = torch.linalg.lstsq(up, flat).solution
    torch.testing.assert_close(up @ coef, flat, atol=1e-6, rtol=0)
    (tmp_path / 'off').mkdir()
    opt_off = idc_distill_opt(tmp_path / 'off', idc_images(tmp_path / 'off'))
    model_off = build_distill_model(IDCModel, opt_off)
    for it in range(1, T):
        model_off.optimize_parameters(it)
    inst_off = model_off.units[0]
    flat_off = (inst_off.x_hat.detach() - inst_off.x0).double().reshape(-1, 64).T
    residual = flat_off - up @ torch.linalg.lstsq(up, flat_off).solution
    assert residual.abs().max() > 1e-4  # without it, Adam's per-pixel steps leave the coarse space


def test_update_lowpass_that_does_not_divide_the_lr_patch_is_refused_by_name(tmp_path):
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), update_lowpass=3)
    with pytest.raises(ValueError, match=r'distill.update_lowpass .* divides the LR patch size'):
        build_distill_model(IDCModel, opt)


def test_psnr_bic_lower_half_by_hand():
    scores = np.array([30., 10., 20., 10., 40.])  # ceil(5 / 2) = 3 lowest, ties to the lower index
    assert idc_model.psnr_bic_lower_half(scores).tolist() == [1, 3, 2]
    assert idc_model.psnr_bic_lower_half(scores, 4).tolist() == [1, 3, 2, 0]


def test_real_side_psnr_bic_matches_x_hat_to_the_informative_half(tmp_path):
    from basicsr_distill.ops.psnr_bic import psnr_bic_batch
    opt = idc_distill_opt(
        tmp_path, idc_images(tmp_path), init='psnr_bic', real_side='psnr_bic', pair_exclude_source=True)
    model = build_distill_model(IDCModel, opt)
    inst = model.start_unit(0, None)
    data = model.source.load_instance(0)
    scores = psnr_bic_batch(data['gt'].permute(0, 2, 3, 1).double().numpy(), scale=4)
    lower = np.argsort(scores, kind='stable')[:-(-len(scores) // 2)]
    torch.testing.assert_close(inst.real, data['lq'][torch.from_numpy(lower.copy())])
    assert inst.num_real == len(scores) and set(inst.init_ids.tolist()) <= set(lower.tolist())
    assert sorted(set(inst.real_owner.tolist())) == sorted(lower.tolist())  # owners: indices into the image's patches
    assert inst.local_real.shape[0] == len(lower) * inst.patches_per_image
    for it in range(1, 3 * T + 1):  # runs to the end, re-matching with the exclusion
        model.optimize_parameters(it)
    assert read_manifest(opt['path']['distilled_root'])['complete']
    with pytest.raises(ValueError, match='distill.real_side must be one of'):
        build_distill_model(IDCModel, idc_distill_opt(tmp_path / 'bad', str(tmp_path / 'hr'), real_side='top'))


def test_the_demo_option_file_condenses_each_bundled_image_into_one_pair(tmp_path):
    """options/distill/idc_demo_n1.yml (the README demo) as written: it builds, its train.total_iter covers every
    batch of K instances, and each of the 24 bundled images gets n = 1 synthetic patch, 16 x 16, started from its
    lower PSNR_bic half."""
    import os

    from basicsr_distill.utils.options import read_option_file
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_demo_n1.yml'))
    train = opt['datasets']['train']
    train['dataroot_gt'] = osp.join(REPO, train['dataroot_gt'])
    opt['path']['pretrain_network_t'] = osp.join(REPO, opt['path']['pretrain_network_t'])
    opt['path']['distilled_root'] = str(tmp_path / 'idc_demo_n1')
    num_images = len(os.listdir(train['dataroot_gt']))
    assert num_images == 24
    k, t = opt['distill']['instances_per_step'], opt['distill']['iters_per_instance']
    assert opt['train']['total_iter'] == -(-num_images // k) * t
    model = build_distill_model(IDCModel, opt)
    inst = model.start_unit(0, None)
    assert inst.n_syn == 1 and tuple(inst.x_hat.shape) == (1, 3, 16, 16)
    assert inst.num_real > 2 * inst.n_syn  # a real condensation: one patch stands for the whole image
