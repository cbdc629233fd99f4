"""IDC with ``distill.instances_per_step`` K > 1: K instances through one teacher pass per step give the set of K = 1.

Bundled real T91 images of different sizes (so instances have different n), one image smaller than a patch (an
empty unit inside a batch), and a partial last batch; the real IMDN teacher.

The whole-run equivalence is checked in float64. In float32 the teacher's convolutions give results that depend on
the batch they run in (oneDNN / GEMM kernels chosen by batch size: about 4e-7 on these features), and Adam, which
divides each gradient element by its running RMS, turns such differences into steps of up to ``lr`` where a
gradient element is near zero: measured here, 4 of 40 pairs differ by up to 0.013 after 6 steps at lr 0.01 (docs/
Methods_IDC.md). In float64 the reordering is about 1e-16 and the batched set equals the K = 1 set; in float32 the
first step's gradients are compared instead.
"""
import os
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import IDC_T as T
from conftest import assert_close_sets, build_distill_model, idc_batched_opt, straight_and_restarted

from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models import idc_model
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.models.idc_model import IDCModel


def _run(opt):
    model = build_distill_model(IDCModel, opt)
    for it in range(1, int(opt['train']['total_iter']) + 1):
        model.optimize_parameters(it)
    return model


def test_batched_instances_give_the_set_of_one_instance_per_step(tmp_path, hr_folder, float64, one_thread):
    # K = 2: [small, t20] (an empty unit beside another), [t9, tt27] (different n); K = 3: [small, t20, t9], [tt27]
    single = idc_batched_opt(tmp_path / 'k1', hr_folder, 1)
    _run(single)
    for k in (2, 3):
        opt = idc_batched_opt(tmp_path / f'k{k}', hr_folder, k)
        model = _run(opt)
        assert model.units == [] and model.units_per_step == k
        assert_close_sets(single['path']['distilled_root'], opt['path']['distilled_root'])
        validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)


def test_one_batched_step_in_float32_gives_each_instance_its_own_gradient(tmp_path, hr_folder):
    model = build_distill_model(IDCModel, idc_batched_opt(tmp_path, hr_folder, 3))
    alone = [model.start_unit(i, None) for i in (1, 2, 3)]  # t20, t9, tt27: n = 2, 4, 34 (their own batches)
    together = [model.start_unit(i, None) for i in (1, 2, 3)]
    for inst in alone:
        model.step_units([inst], 1, 1)
    model.step_units(together, 1, 1)
    for a, b in zip(alone, together):
        assert a.x_hat.shape[0] == b.x_hat.shape[0] and a.generator.get_state().equal(b.generator.get_state())
        scale = a.x_hat.grad.abs().max()
        assert (a.x_hat.grad - b.x_hat.grad).abs().max() <= 1e-3 * scale, a.name  # measured: 2.7e-4 (t9)
        # Adam's first step is lr * g / (|g| + eps): lr * sign(g) except where |g| is near eps, where the gradients'
        # difference above (reduction order: it depends on the thread count) moves it; measured 1.3e-6 on 1 thread
        assert (a.x_hat.detach() - b.x_hat.detach()).abs().max() <= 1e-3 * 0.01, a.name  # 1e-3 x lr


def test_restart_inside_a_batch_gives_the_uninterrupted_set(tmp_path, hr_folder):
    # K = 2, stop after iteration T + 4 (inside [t9, tt27], past an assignment round): the state holds both
    straight_and_restarted(
        lambda opt: build_distill_model(IDCModel, opt),
        idc_batched_opt(tmp_path / 'a', hr_folder, 2),
        idc_batched_opt(tmp_path / 'b', hr_folder, 2),
        total=2 * T,
        stop=T + 4)
    ra, rb = (str(tmp_path / d / 'distilled') for d in 'ab')
    assert read_manifest(rb)['complete']
    for pair in read_manifest(ra)['pairs']:
        for sub, ext in (('lr_float', 'npy'), ('hr', 'png'), ('lr', 'png')):
            with open(osp.join(ra, sub, f'{pair["name"]}.{ext}'), 'rb') as fa, \
                    open(osp.join(rb, sub, f'{pair["name"]}.{ext}'), 'rb') as fb:
                assert fa.read() == fb.read(), pair['name']


def test_training_state_holds_every_instance_of_the_batch_and_a_different_k_is_refused(tmp_path, hr_folder):
    opt = idc_batched_opt(tmp_path, hr_folder, 2)
    model = build_distill_model(IDCModel, opt)
    for it in (1, 2):
        model.optimize_parameters(it)
    model.save(0, 2)
    state = torch.load(osp.join(model.opt['path']['training_states'], '2.state'), weights_only=True)
    assert state['units_per_step'] == 2 and [s['unit_index'] for s in state['unit_state']] == [1]  # small: written
    other = build_distill_model(IDCModel, idc_batched_opt(tmp_path / 'k3', hr_folder, 3))
    with pytest.raises(ValueError, match=r'2 unit\(s\) per step, this run has 3 \(distill.instances_per_step\)'):
        other.resume_training(state)


def test_total_iter_counts_batches(tmp_path, hr_folder):
    opt = idc_batched_opt(tmp_path, hr_folder, 3)
    opt['train']['total_iter'] = 2 * T - 1
    with pytest.raises(ValueError, match=rf'ceil\(4 images / 3 per step\) = 2 x distill.iters_per_instance={T}'):
        build_distill_model(IDCModel, opt)
    assert DistillBaseModel.locate_group(T + 1, T, units_per_step=3) == ([3, 4, 5], 1)
    assert DistillBaseModel.locate_group(2, T, rank=1, world_size=2, units_per_step=2) == ([1, 3], 2)


def test_nan_in_one_instance_stops_naming_it_and_no_instance_moves(tmp_path, hr_folder, monkeypatch):
    opt = idc_batched_opt(tmp_path, hr_folder, 2)
    model = build_distill_model(IDCModel, opt)
    for it in range(1, T + 3):  # [small, t20] written, two steps of [t9, tt27]
        model.optimize_parameters(it)
    assert [u.name for u in model.units] == ['t9', 'tt27']
    before = [(u.x_hat.detach().clone(), u.optimizer.state_dict()['state'][0]['exp_avg'].clone()) for u in model.units]
    original = idc_model.multi_level_ncfd

    def nan_in_tt27(bank, *args, **kwargs):
        l_ins, l_group = original(bank, *args, **kwargs)
        return (l_ins * float('nan') if bank is model.units[1].bank else l_ins), l_group

    monkeypatch.setattr(idc_model, 'multi_level_ncfd', nan_in_tt27)
    with pytest.raises(FloatingPointError, match=rf'IDC instance 4 of 4 \(tt27\), iteration {T + 3} .*non-finite loss'):
        model.optimize_parameters(T + 3)
    for unit, (x_hat, exp_avg) in zip(model.units, before):  # t9's Adam did not step either
        assert torch.equal(unit.x_hat.detach(), x_hat)
        assert torch.equal(unit.optimizer.state_dict()['state'][0]['exp_avg'], exp_avg)
    root = opt['path']['distilled_root']
    assert validate_distilled_set(root, scale=4, check_contents=True)['units_finished'] == ['small', 't20']
    assert not [f for f in os.listdir(osp.join(root, 'hr')) if f.startswith(('t9', 'tt27'))]
