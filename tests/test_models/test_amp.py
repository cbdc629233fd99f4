"""``distill.amp``: the frozen networks' passes under bfloat16 autocast on the CPU stay close to float32, and what is
optimised (x_hat, latents, DiffFit tensors), the losses and the optimiser state stay float32.

Measured on these tiny configs (2026-12-06, torch 2.13 CPU, 1 thread) and documented in docs/Profiling.md, "Mixed
precision": from the same start, the first step's gradient under bf16 has cosine 0.90 (IDC: real IMDN teacher, bundled
T91 images) and 0.87 (GSDD: compact generator) with the float32 gradient (relative L2 difference 0.47 / 0.54: bf16
keeps 8 bits of mantissa, and both objectives are differences of nearly equal feature statistics); the first step's
loss differs by 0.65 % (IDC L_ins) and 0.84 % (GSDD objective); after 3 IDC steps (Adam, lr 0.01: up to 0.03 per
element) x_hat differs by 0.0088 on average. The asserted bounds leave a margin over these.
"""
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import build_distill_model, gsdd_classes, gsdd_opt, idc_distill_opt, idc_images, minimax_opt

from basicsr_distill.models.gsdd_model import GSDDModel
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel
from basicsr_distill.utils.amp import MixedPrecision, check_amp

GRAD_COS = 0.75  # cosine of the first step's bf16 and float32 gradients, at least (measured 0.90 / 0.87)
LOSS_RTOL = 0.03  # relative difference of the first step's loss, at most (measured 0.0065 / 0.0084)
IDC_XHAT_MEAN_ATOL = 0.02  # mean |x_hat_bf16 - x_hat_fp32| after 3 steps, at most (measured 0.0088)


def _idc_steps(tmp_path, amp, steps=3):
    """3 steps of the first instance; returns the model, the instance, the first step's gradient and the L_ins."""
    (tmp_path / amp).mkdir()
    model = build_distill_model(IDCModel, idc_distill_opt(tmp_path / amp, idc_images(tmp_path / amp), amp=amp))
    inst = model.start_unit(0, None)
    losses = []
    for step in range(1, steps + 1):
        model.step_units([inst], step, step)
        losses.append(model.log_dict['l_ins'])
        if step == 1:
            grad = inst.x_hat.grad.clone()
    return model, inst, grad, losses


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _assert_float32_state(optimizer, tensors):
    for t in tensors:
        assert t.dtype == torch.float32
        assert t.grad is None or t.grad.dtype == torch.float32
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.ndim:
                assert value.dtype == torch.float32


def test_idc_bf16_step_close_to_float32(tmp_path):
    _, ref, ref_grad, ref_losses = _idc_steps(tmp_path, 'off')
    model, inst, grad, losses = _idc_steps(tmp_path, 'bf16')
    assert model.amp.dtype == torch.bfloat16 and model.amp.scaler is None
    mean_diff = (inst.x_hat.detach() - ref.x_hat.detach()).abs().mean().item()
    assert not torch.equal(grad, ref_grad)  # the teacher did run in bf16
    assert _cos(grad, ref_grad) > GRAD_COS
    assert abs(losses[0] - ref_losses[0]) <= LOSS_RTOL * abs(ref_losses[0])
    assert mean_diff < IDC_XHAT_MEAN_ATOL
    _assert_float32_state(inst.optimizer, [inst.x_hat])
    feats = model.amp.forward(model.tap, inst.x_hat)
    assert feats.dtype == torch.float32
    losses = model.idc_losses(inst, inst.rlff(feats), 1)
    assert all(v.dtype == torch.float32 for v in losses.values())


def _gsdd_steps(tmp_path, amp, steps=2):
    """2 steps of the first class; returns the model, the first step's latent gradient and the objectives."""
    model = build_distill_model(GSDDModel, gsdd_opt(tmp_path / amp, gsdd_classes(tmp_path / amp), amp=amp))
    model._start_unit(0)
    totals = []
    for step in range(1, steps + 1):
        model.step_unit(model.unit, step, step)
        totals.append(model.log_dict['l_total'])
        if step == 1:
            grad = model.unit.z.grad.clone()
    return model, grad, totals


def test_gsdd_bf16_step_close_to_float32(tmp_path):
    ref, ref_grad, ref_totals = _gsdd_steps(tmp_path, 'off')
    model, grad, totals = _gsdd_steps(tmp_path, 'bf16')
    assert not torch.equal(grad, ref_grad)  # the generator did run in bf16
    assert _cos(grad, ref_grad) > GRAD_COS
    assert abs(totals[0] - ref_totals[0]) <= LOSS_RTOL * abs(ref_totals[0])
    _assert_float32_state(model.unit.optimizer, [model.unit.z])


def test_minimax_bf16_finetune_step_and_sampling_stay_float32(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['distill']['amp'] = 'bf16'
    model = build_distill_model(MinimaxDiffusionModel, opt)
    model.optimize_parameters(1)  # stage 1
    model.optimize_parameters(2)  # one fine-tuning step under bf16 autocast
    assert all(torch.isfinite(torch.tensor(v)) for v in model.log_dict.values())
    _assert_float32_state(model.ft.optimizer, model.ft.optimizer.param_groups[0]['params'])
    z0, _ = model.real_batch(2)
    assert z0.dtype == torch.float32


@pytest.mark.parametrize('make', ['idc', 'gsdd'])
def test_fp16_refused_on_cpu_naming_the_option(tmp_path, make):
    if make == 'idc':
        opt, cls = idc_distill_opt(tmp_path, idc_images(tmp_path), amp='fp16'), IDCModel
    else:
        opt, cls = gsdd_opt(tmp_path, gsdd_classes(tmp_path), amp='fp16'), GSDDModel
    with pytest.raises(ValueError, match=r'distill\.amp: fp16 is for CUDA.*bf16 or off'):
        build_distill_model(cls, opt)


def test_unknown_amp_mode_refused():
    with pytest.raises(ValueError, match=r"distill\.amp must be one of \['off', 'bf16', 'fp16'\], got 'fp32'"):
        check_amp('fp32', 'cpu')


def test_off_is_a_no_op():
    amp = MixedPrecision('off', 'cpu')
    x = torch.ones(2, dtype=torch.float64)
    assert amp.forward(lambda t: t * 2, x).dtype == torch.float64 and amp.scale(x) is x and amp.unscale([])
