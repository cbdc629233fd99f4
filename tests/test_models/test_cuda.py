"""The three methods on CUDA: steps, a short distillation each, device placement, generators, batched IDC.

Marked ``cuda``: skipped where CUDA is unavailable (CI, this project's CPU machines) and run by
``scripts/gpu_check.sh`` on a GPU machine. ``BASICSR_DISTILL_TEST_DEVICE=cpu`` runs them on the CPU instead, to check
the tests themselves where there is no GPU (``pytest -m cuda`` with that variable set).
"""
import os
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import BATCHED_NAMES as NAMES
from conftest import assert_close_sets, build_distill_model, gsdd_classes, gsdd_opt
from conftest import idc_batched_opt as idc_opt
from conftest import minimax_opt

from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models.gsdd_model import GSDDModel
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel

ON_CPU = os.environ.get('BASICSR_DISTILL_TEST_DEVICE') == 'cpu'
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason='needs CUDA (scripts/gpu_check.sh)')
]
DEVICE = 'cpu' if ON_CPU else 'cuda'
NUM_GPU = 0 if ON_CPU else 1


def _run(model, total):
    for it in range(1, total + 1):
        model.optimize_parameters(it)
    return model


def test_idc_steps_and_a_short_distillation_on_the_device(tmp_path, hr_folder):
    opt = dict(idc_opt(tmp_path, hr_folder, 2), num_gpu=NUM_GPU)
    model = build_distill_model(IDCModel, opt)
    assert model.device.type == DEVICE and next(model.net_t.parameters()).device.type == DEVICE
    for it in range(1, 4):  # [small, t20]: small written at 1, t20 in progress
        model.optimize_parameters(it)
    inst = model.units[0]
    assert inst.x_hat.device.type == DEVICE and inst.local_real.device.type == DEVICE
    assert inst.generator.device.type == 'cpu'  # seeded draws on the CPU: the same on every device
    assert inst.x_hat.grad is not None and 0 <= float(inst.x_hat.min()) and float(inst.x_hat.max()) <= 1
    _run(model, int(opt['train']['total_iter']))
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['complete'] and manifest['units_finished'] == list(NAMES)


def test_idc_batched_equals_one_instance_per_step_on_the_device(tmp_path, hr_folder, float64):
    roots = []
    for k in (1, 3):
        opt = dict(idc_opt(tmp_path / f'k{k}', hr_folder, k), num_gpu=NUM_GPU)
        _run(build_distill_model(IDCModel, opt), int(opt['train']['total_iter']))
        roots.append(opt['path']['distilled_root'])
    assert_close_sets(*roots)


def test_idc_on_the_device_writes_the_cpu_set_up_to_floating_point(tmp_path, hr_folder, float64):
    roots = []
    for num_gpu in (0, NUM_GPU):
        opt = dict(idc_opt(tmp_path / f'gpu{num_gpu}', hr_folder, 2), num_gpu=num_gpu)
        _run(build_distill_model(IDCModel, opt), int(opt['train']['total_iter']))
        roots.append(opt['path']['distilled_root'])
    assert_close_sets(*roots)


def test_gsdd_step_and_a_short_distillation_on_the_device(tmp_path):
    opt = gsdd_opt(tmp_path, gsdd_classes(tmp_path))
    opt['num_gpu'] = NUM_GPU
    model = build_distill_model(GSDDModel, opt)
    assert model.device.type == DEVICE
    model.optimize_parameters(1)
    unit = model.unit
    assert unit.z.device.type == DEVICE and unit.generator.device.type == 'cpu' and unit.z.grad is not None
    _run(model, int(opt['train']['total_iter']))
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['complete'] and manifest['num_pairs'] == 2 * int(opt['distill']['ipc'])


def test_minimax_three_stages_on_the_device(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['num_gpu'] = NUM_GPU
    model = build_distill_model(MinimaxDiffusionModel, opt)
    assert model.device.type == DEVICE
    _run(model, int(opt['train']['total_iter']))
    assert next(model.dit.parameters()).device.type == DEVICE
    manifest = read_manifest(opt['path']['distilled_root'])
    assert manifest['complete'] and manifest['num_pairs'] > 0
    assert osp.isfile(osp.join(opt['path']['distilled_root'], manifest['pairs'][0]['name'].join(['hr/', '.png'])))
