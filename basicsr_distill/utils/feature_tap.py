"""Deep features of any BasicSR arch at a named layer, the forward pass stopped there (later layers not computed)."""
import torch


class _StopForward(Exception):
    pass


class FeatureTap:
    """Callable returning the feature map of ``net`` at ``layer``; gradients flow to the input.

    Args:
        net (nn.Module): A BasicSR arch (SwinIR, EDSR, RRDBNet, IMDN, ...).
        layer (str | None): Name from ``net.named_modules()``; None uses ``net.forward_features``.

    Raises:
        KeyError: If ``layer`` is not a submodule name (the message lists the top-level names).
        ValueError: If ``layer`` is None and the net has no ``forward_features``.
    """

    def __init__(self, net, layer=None):
        self.net = net
        self.layer = layer
        if layer is None:
            if not callable(getattr(net, 'forward_features', None)):
                raise ValueError(f'{type(net).__name__} has no forward_features(); name a layer in '
                                 f'distill.feature_layer (one of {self._top_names()})')
            self.module = None
        else:
            modules = dict(net.named_modules())
            if layer not in modules:
                raise KeyError(f'distill.feature_layer={layer!r} is not a layer of {type(net).__name__}; top-level '
                               f'layers: {self._top_names()}')
            self.module = modules[layer]

    def _top_names(self):
        return [name for name, _ in self.net.named_children()]

    def __call__(self, x):
        """(N, 3, h, w) LR input in [0, 1] -> feature map (N, c, h', w') (h' = h for most SR archs)."""
        if self.module is None:
            return self.net.forward_features(x)
        store = {}

        def hook(_module, _inputs, output):
            store['feat'] = output
            raise _StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            self.net(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if 'feat' not in store:
            raise RuntimeError(f'layer {self.layer!r} of {type(self.net).__name__} was not reached by forward()')
        feat = store['feat']
        if isinstance(feat, (tuple, list)):
            feat = feat[0]
        if feat.ndim == 3:  # token layout (N, L, C) of transformer blocks: back to (N, C, h, w) when square
            side = int(round(feat.shape[1]**0.5))
            if side * side != feat.shape[1]:
                raise ValueError(f'layer {self.layer!r} returns tokens {tuple(feat.shape)}; pick a conv layer')
            feat = feat.transpose(1, 2).reshape(feat.shape[0], feat.shape[2], side, side)
        return feat

    @torch.no_grad()
    def batched(self, x, batch_size):
        """No-grad features of a large stack (N, 3, h, w), computed ``batch_size`` patches at a time."""
        return torch.cat([self(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
