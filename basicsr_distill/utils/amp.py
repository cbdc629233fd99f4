"""Mixed precision for the frozen networks' passes (``distill.amp: off | bf16 | fp16``).

The networks that dominate each step (IDC's teacher, GSDD's generator, Minimax-SR's DiT and VAE) run under
``torch.autocast``; what is optimised (x_hat, latents, DiffFit tensors), optimiser states and losses stay float32.
``fp16`` adds a ``GradScaler`` (a step with non-finite unscaled gradients is skipped, as ``GradScaler`` does) and is
refused on the CPU; ``bf16`` needs no scaler. Measured tolerance: docs/Profiling.md.
"""
import contextlib
import torch

AMP_MODES = ('off', 'bf16', 'fp16')
_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def check_amp(mode, device, option='distill.amp'):
    """Check an ``amp`` option (:data:`AMP_MODES`) against the device; ValueError for an unknown mode or ``fp16`` on a
    CPU."""
    if mode not in AMP_MODES:
        raise ValueError(f'{option} must be one of {list(AMP_MODES)}, got {mode!r}')
    if mode == 'fp16' and torch.device(device).type == 'cpu':
        raise ValueError(f'{option}: fp16 is for CUDA (CPU autocast runs bfloat16 only); set {option}: bf16 or off '
                         'on the CPU')


class MixedPrecision:
    """Autocast and, for fp16, a gradient scaler (``scaler``, else None), for one model on ``device``."""

    def __init__(self, mode, device):
        check_amp(mode, device)
        self.mode = mode
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == 'fp16' else None

    @property
    def enabled(self):
        return self.dtype is not None

    def autocast(self):
        """A context in which the frozen network runs (``nullcontext`` when off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def forward(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` under autocast; a tensor result (or a ``.sample`` output's) cast to float32."""
        if not self.enabled:
            return fn(*args, **kwargs)
        with self.autocast():
            out = fn(*args, **kwargs)
        return to_float32(out)

    def scale(self, tensor):
        """The objective (or an incoming gradient) times the scaler's scale; unchanged without a scaler."""
        return tensor if self.scaler is None else self.scaler.scale(tensor)

    def unscale(self, optimizers):
        """Divide the gradients of ``optimizers`` by the scale; False when the scaler found a non-finite gradient (the
        step is then skipped), True otherwise and without a scaler."""
        if self.scaler is None:
            return True
        finite = True
        for opt in optimizers:
            self.scaler.unscale_(opt)
            for group in opt.param_groups:
                finite &= all(bool(torch.isfinite(p.grad).all()) for p in group['params'] if p.grad is not None)
        return finite

    def step(self, optimizer):
        """The optimiser's step; with the fp16 scaler, skipped where its unscaled gradient is not finite."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def update(self):
        """After every optimiser of the step has stepped: the fp16 scale's update (nothing otherwise)."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self):
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def to_float32(out):
    """A floating tensor cast to float32; an object with a tensor ``.sample`` (diffusers outputs) gets it cast."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if hasattr(out, 'sample') and torch.is_tensor(out.sample):
        out.sample = out.sample.float()
    return out
