"""Exponential moving average of the trainable parameters (DiT's EMA, decay 0.9999, used for sampling).

``shadow <- decay * shadow + (1 - decay) * param`` after every optimiser step, shadows starting at the current values
(the reference's ``update_ema(ema, model, decay=0)``). Departure: Minimax Diffusion averages a full DiT copy; frozen
parameters never change, so averaging only the trainable ones gives the same EMA model with a few MB. Build it after
:func:`~basicsr_distill.archs.dit_difffit_arch.apply_difffit`. Shadows are at least float32. Sampling:
``ema.store(dit); ema.copy_to(dit); ...; ema.restore(dit)``.
"""
import torch
from collections import OrderedDict
from torch import nn

__all__ = ['EMA']


def _named(source):
    """(name, parameter) pairs of a module's trainable parameters, or of an iterable of parameters / pairs."""
    if isinstance(source, nn.Module):
        return [(n, p) for n, p in source.named_parameters() if p.requires_grad]
    items = list(source)
    if items and isinstance(items[0], tuple):
        return [(n, p) for n, p in items if p.requires_grad]
    return [(str(i), p) for i, p in enumerate(items) if p.requires_grad]


class EMA:
    """EMA of a model's trainable parameters.

    Args:
        model_params (nn.Module | Iterable[Parameter] | Iterable[tuple[str, Parameter]]): A module (by name),
            parameters (named ``'0'``, ``'1'``, ... by position), or ``named_parameters()`` pairs; only those
            requiring gradients are tracked.
        decay (float): Decay in [0, 1]. Default: 0.9999 (DiT / Minimax Diffusion).

    Raises:
        ValueError: If ``decay`` is outside [0, 1] or nothing is trainable.
    """

    def __init__(self, model_params, decay=0.9999):
        if not 0 <= decay <= 1:
            raise ValueError(f'decay must be in [0, 1], got {decay}.')
        self.decay = float(decay)
        self._params = OrderedDict(_named(model_params))
        if not self._params:
            raise ValueError('EMA got no trainable parameters.')
        self.shadow = OrderedDict(
            (n, p.detach().clone().to(torch.promote_types(p.dtype, torch.float32))) for n, p in self._params.items())
        self.num_updates = 0
        self._backup = None

    @torch.no_grad()
    def update(self):
        """One EMA step on the tracked parameters: ``shadow = decay * shadow + (1 - decay) * param``."""
        for name, param in self._params.items():
            shadow = self.shadow[name]
            shadow.mul_(self.decay).add_(param.detach().to(shadow), alpha=1 - self.decay)
        self.num_updates += 1

    def _targets(self, module):
        if module is None:
            return self._params
        named = OrderedDict(_named_all(module))
        missing = [n for n in self.shadow if n not in named]
        if missing:
            raise KeyError(f'The module has no parameters {missing[:5]}{"..." if len(missing) > 5 else ""}; apply the '
                           f'same DiffFit options to it before copying.')
        return OrderedDict((n, named[n]) for n in self.shadow)

    @torch.no_grad()
    def copy_to(self, module=None):
        """Write the shadows (cast to the target dtype) into the parameters of the same names of ``module``: a module
        (frozen parameters included), an iterable as in the constructor, or None for the tracked parameters.

        Raises:
            KeyError: If a shadow has no parameter of its name in the target.
            ValueError: On a shape mismatch.
        """
        for name, param in self._targets(module).items():
            shadow = self.shadow[name]
            if param.shape != shadow.shape:
                raise ValueError(f'Shape of {name}: parameter {tuple(param.shape)}, shadow {tuple(shadow.shape)}.')
            param.copy_(shadow.to(param.dtype))

    @torch.no_grad()
    def store(self, module=None):
        """Keep a copy of the target parameters (as in :meth:`copy_to`) for :meth:`restore`."""
        self._backup = OrderedDict((n, p.detach().clone()) for n, p in self._targets(module).items())

    @torch.no_grad()
    def restore(self, module=None):
        """Put back the values saved by :meth:`store`; RuntimeError if nothing was stored."""
        if self._backup is None:
            raise RuntimeError('EMA.restore called before EMA.store.')
        for name, param in self._targets(module).items():
            param.copy_(self._backup[name])
        self._backup = None

    def state_dict(self):
        """``{'decay', 'num_updates', 'shadow': {name: tensor}}``."""
        return dict(decay=self.decay, num_updates=self.num_updates, shadow=OrderedDict(self.shadow))

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (the decay too).

        Raises:
            KeyError: If the tracked names differ from the saved ones.
            ValueError: On a shape mismatch.
        """
        saved = state['shadow']
        if set(saved) != set(self.shadow):
            raise KeyError(f'EMA names differ: missing {sorted(set(self.shadow) - set(saved))[:5]}, unexpected '
                           f'{sorted(set(saved) - set(self.shadow))[:5]}.')
        for name, shadow in self.shadow.items():
            if saved[name].shape != shadow.shape:
                raise ValueError(f'Shape of {name}: saved {tuple(saved[name].shape)}, here {tuple(shadow.shape)}.')
            shadow.copy_(saved[name])
        self.decay = float(state.get('decay', self.decay))
        self.num_updates = int(state.get('num_updates', 0))


def _named_all(target):
    """All (name, parameter) pairs of a module, or of an iterable as in :class:`EMA`, frozen ones included."""
    if isinstance(target, nn.Module):
        return list(target.named_parameters())
    items = list(target)
    if items and isinstance(items[0], tuple):
        return items
    return [(str(i), p) for i, p in enumerate(items)]
