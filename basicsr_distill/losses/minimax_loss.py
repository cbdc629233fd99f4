"""Minimax-SR's Stage-2 losses (Eq. 3-6): Minimax Diffusion's memory losses and the SR high-frequency term.

With z_hat the DiT's predicted clean latent (:func:`predict_x0_from_eps`; the paper's ``z_t - eps_theta`` is shorthand
for it) flattened, and sigma the cosine similarity:

    L_r    = 1 - min_{i in batch_c, m in real_mem_c} sigma(z_hat_i, z_m)     representativeness, Eq. 3
    L_d    =     max_{i in batch_c, d in syn_mem_c}  sigma(z_hat_i, z_d)     diversity, Eq. 4
    L_SR   = - mean (up(down(c(x_hat))) - c(x_hat))^2, c = clamp to [0, 1]   high frequency, Eq. 5
    L      = L_simple + lambda_r L_r + lambda_d L_d + lambda_sr L_SR          Eq. 6 (0.002, 0.008, 1)

As the reference: L_r and L_d are averaged over the classes in the batch (an empty memory adds 0 but counts), and the
batch is pushed into the memories after the losses. Departures (docs/Methods_Minimax.md): Eq. 3's ``argmax min`` and
Eq. 5's ``argmax`` become terms to minimise; L_SR averages over pixels (lambda_sr = 1 keeps a pixel-MSE scale);
x_hat is clamped so L_SR stays bounded at noisy timesteps; ``down`` / ``up`` are Eq. 1's ``imresize`` as resize
matrices, so ``-L_SR = 10^(-PSNR_bic(x_hat) / 10)``.
"""
import torch
from functools import lru_cache
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY
from basicsr_distill.ops.psnr_bic import bicubic_resize_matrix

__all__ = [
    'FIFOMemory', 'cosine_matrix', 'predict_x0_from_eps', 'representativeness_loss', 'diversity_loss',
    'high_frequency_energy', 'sr_loss', 'minimax_objective', 'MinimaxLoss'
]


class FIFOMemory:
    """Per-class first-in-first-out memory of (dim,) vectors (Minimax Diffusion's real / synthetic memories).

    Args:
        num_classes (int): Number of classes k (labels 0..k-1).
        size (int): Capacity per class; the oldest entries are dropped beyond it. Default: 64 (the reference).
        dim (int | None): Vector size; None: from the first :meth:`push`. Default: None.

    Raises:
        ValueError: If ``num_classes`` or ``size`` is < 1.
    """

    def __init__(self, num_classes, size=64, dim=None):
        if num_classes < 1 or size < 1:
            raise ValueError(f'num_classes and size must be >= 1, got {num_classes} and {size}.')
        self.num_classes = int(num_classes)
        self.size = int(size)
        self.dim = None if dim is None else int(dim)
        self._banks = [None] * self.num_classes

    def push(self, labels, vectors):
        """Append vectors to their classes' memories (in batch order), dropping the oldest beyond ``size``.

        Args:
            labels (Tensor | Sequence[int]): (B,) class indices in [0, num_classes).
            vectors (Tensor): (B, ...) vectors, flattened to (B, dim); stored detached.

        Raises:
            ValueError: On a label out of range, a batch-size mismatch, or a vector size differing from ``dim``.
        """
        labels = torch.as_tensor(labels).long().flatten().cpu()
        vectors = vectors.detach().flatten(1) if vectors.ndim > 1 else vectors.detach()[:, None]
        if labels.numel() != vectors.shape[0]:
            raise ValueError(f'{labels.numel()} labels for {vectors.shape[0]} vectors.')
        if labels.numel() == 0:
            return
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f'Labels must lie in [0, {self.num_classes}), got {labels.tolist()}.')
        if self.dim is None:
            self.dim = vectors.shape[1]
        if vectors.shape[1] != self.dim:
            raise ValueError(f'Vectors of size {vectors.shape[1]} pushed into a memory of size {self.dim}.')
        for c in labels.unique().tolist():
            new = vectors[labels.to(vectors.device) == c]
            bank = self._banks[c]
            bank = new if bank is None else torch.cat([bank.to(new), new])
            self._banks[c] = bank[-self.size:].clone()

    def get(self, c):
        """Entries of class ``c``, oldest first: (n_c, dim) detached; (0, dim) or (0, 0) when empty.

        Raises:
            ValueError: If ``c`` is out of range.
        """
        c = int(c)
        if not 0 <= c < self.num_classes:
            raise ValueError(f'Class {c} out of range [0, {self.num_classes}).')
        bank = self._banks[c]
        return torch.empty(0, self.dim or 0) if bank is None else bank

    def __len__(self):
        """Total number of stored entries over all classes."""
        return sum(0 if b is None else b.shape[0] for b in self._banks)

    def state_dict(self):
        """Serialisable state: ``num_classes``, ``size``, ``dim`` and the per-class entries (CPU tensors or None)."""
        return dict(
            num_classes=self.num_classes,
            size=self.size,
            dim=self.dim,
            banks=[None if b is None else b.cpu().clone() for b in self._banks])

    def load_state_dict(self, state, device=None):
        """Restore a :meth:`state_dict` onto ``device`` (default CPU), banks cut to ``size``.

        Raises:
            ValueError: If the number of classes or the vector size differs.
        """
        if int(state['num_classes']) != self.num_classes:
            raise ValueError(f'State has {state["num_classes"]} classes, this memory {self.num_classes}.')
        dim = state['dim']
        if self.dim is not None and dim is not None and int(dim) != self.dim:
            raise ValueError(f'State has vectors of size {dim}, this memory {self.dim}.')
        self.dim = self.dim if dim is None else int(dim)
        self._banks = [None if b is None else b[-self.size:].clone().to(device or 'cpu') for b in state['banks']]


def cosine_matrix(a, b, eps=1e-8):
    """(N, M) cosine similarities in [-1, 1] of the rows of ``a`` (N, D) and ``b`` (M, D); norms >= ``eps``."""
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T


def predict_x0_from_eps(z_t, eps, alphas_cumprod, t):
    """Predicted clean latent of DDPM: ``sqrt(1 / a_t) z_t - sqrt(1 / a_t - 1) eps`` (the z_hat of Eq. 3-4).

    Args:
        z_t (Tensor): (B, C, h, w) noisy latents.
        eps (Tensor): (B, C, h, w) predicted noise.
        alphas_cumprod (Tensor): (T,) cumulative products a_t of the schedule.
        t (Tensor): (B,) int64 timesteps.

    Returns:
        Tensor: (B, C, h, w) predicted x0, differentiable in ``eps``.
    """
    a = alphas_cumprod.to(device=z_t.device, dtype=torch.float64)[t.to(z_t.device)]
    a = a.to(z_t.dtype).view(-1, *([1] * (z_t.ndim - 1)))
    return (1 / a).sqrt() * z_t - (1 / a - 1).sqrt() * eps


def _memory_term(pred_x0, labels, memory, reduce):
    pred = pred_x0.flatten(1)
    labels = torch.as_tensor(labels, device=pred.device).long().flatten()
    if labels.numel() != pred.shape[0]:
        raise ValueError(f'{labels.numel()} labels for {pred.shape[0]} predictions.')
    total = pred.new_zeros(())
    classes = labels.unique().tolist()
    for c in classes:
        mem = memory.get(c)
        if mem is None or mem.shape[0] == 0:
            continue
        if mem.shape[1] != pred.shape[1]:
            raise ValueError(f'Memory of class {c} holds vectors of size {mem.shape[1]}, predictions have '
                             f'{pred.shape[1]}.')
        total = total + reduce(cosine_matrix(pred[labels == c], mem.to(pred)))
    return total / max(len(classes), 1)


def representativeness_loss(pred_x0, labels, real_memory):
    """Representativeness loss L_r (Eq. 3): mean over the batch's classes c of ``1 - min cos(z_hat_c, real_mem_c)``.

    Args:
        pred_x0 (Tensor): (B, ...) predicted clean latents, flattened to (B, D); differentiable.
        labels (Tensor | Sequence[int]): (B,) pseudo-class indices.
        real_memory (FIFOMemory | Mapping): ``.get(c)``: (m_c, D) real latents of class c (None or empty if none).

    Returns:
        Tensor: Scalar in [0, 2]; 0 if no class has memory.

    Raises:
        ValueError: On a label / prediction count mismatch or a memory of another vector size.
    """
    return _memory_term(pred_x0, labels, real_memory, lambda sim: 1 - sim.min())


def diversity_loss(pred_x0, labels, syn_memory):
    """Diversity loss L_d (Eq. 4): mean over the batch's classes c of ``max cos(z_hat_c, syn_mem_c)``, in [-1, 1].

    Arguments and errors as :func:`representativeness_loss`, ``syn_memory`` holding the earlier predictions.
    """
    return _memory_term(pred_x0, labels, syn_memory, lambda sim: sim.max())


@lru_cache(maxsize=16)
def _round_trip_matrix(length, scale, dtype, device):
    """(length, length) tensor of imresize's x1/scale then x scale along one axis (cached)."""
    down = bicubic_resize_matrix(length, 1 / scale)
    up = bicubic_resize_matrix(length // scale, scale)
    return torch.from_numpy(up @ down).to(device=device, dtype=dtype)


def _bicubic_down_up(img, scale):
    if img.ndim != 4:
        raise ValueError(f'Expected (B, C, H, W) images, got shape {tuple(img.shape)}.')
    h, w = img.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f'Image size {h}x{w} is not a multiple of the scale {scale}.')
    if h < 2 * scale or w < 2 * scale:
        raise ValueError(f'Image size {h}x{w} is smaller than 2 x scale {scale} (imresize needs 2 LR pixels).')
    rows = _round_trip_matrix(int(h), int(scale), img.dtype, img.device)
    cols = _round_trip_matrix(int(w), int(scale), img.dtype, img.device)
    return rows @ img @ cols.T


def high_frequency_energy(img, scale=4):
    """``mean((up(down(img)) - img)^2)`` with Eq. 1's bicubic (differentiable); ``10 log10(1 / energy)`` is PSNR_bic.

    Args:
        img (Tensor): (B, C, H, W) images, H and W multiples of ``scale``, at least ``2 * scale``.
        scale (int): Down-sampling factor. Default: 4.

    Returns:
        Tensor: Scalar >= 0.

    Raises:
        ValueError: If ``img`` is not 4-D, or its size is not a multiple of ``scale`` or below ``2 * scale``.
    """
    return ((_bicubic_down_up(img, scale) - img)**2).mean()


def sr_loss(pred_hr, scale=4, clamp=True):
    """SR loss L_SR (Eq. 5) to minimise: ``-high_frequency_energy(clamp(x_hat, 0, 1))``, in (-1.6, 0].

    Args:
        pred_hr (Tensor): (B, 3, H, W) predicted HR images x_hat, about [0, 1]; H and W as in
            :func:`high_frequency_energy` (which raises the same errors).
        scale (int): SR scale. Default: 4.
        clamp (bool): Clamp x_hat to [0, 1] first (pixels outside pass no gradient). Default: True.
    """
    return -high_frequency_energy(pred_hr.clamp(0, 1) if clamp else pred_hr, scale)


def minimax_objective(l_simple, l_r, l_d, l_sr, lambda_r=0.002, lambda_d=0.008, lambda_sr=1.0):
    """Minimax-SR's overall loss, Eq. 6: ``l_simple + lambda_r l_r + lambda_d l_d + lambda_sr l_sr``.

    Defaults: lambda_r 0.002 and lambda_d 0.008 (both papers), lambda_sr 1 (Minimax-SR). ``l_sr`` is :func:`sr_loss`,
    already signed to be minimised.

    Returns:
        Tensor | float: The weighted sum.

    Raises:
        ValueError: If a weight is negative.
    """
    for name, lam in (('lambda_r', lambda_r), ('lambda_d', lambda_d), ('lambda_sr', lambda_sr)):
        if lam < 0:
            raise ValueError(f'{name} must be >= 0, got {lam}.')
    return l_simple + lambda_r * l_r + lambda_d * l_d + lambda_sr * l_sr


@LOSS_REGISTRY.register()
class MinimaxLoss(nn.Module):
    """Minimax-SR's extra terms of Eq. 6 with their memories, as a BasicSR loss.

    Args:
        num_classes (int): Number of pseudo-classes k.
        memory_size (int): FIFO capacity per class. Default: 64.
        lambda_r, lambda_d, lambda_sr (float): Weights of Eq. 6, >= 0. Default: 0.002, 0.008, 1.0.
        scale (int): SR scale of L_SR. Default: 4.
        loss_weight (float): Multiplier of the whole loss. Default: 1.0.
    """

    def __init__(self,
                 num_classes,
                 memory_size=64,
                 lambda_r=0.002,
                 lambda_d=0.008,
                 lambda_sr=1.0,
                 scale=4,
                 loss_weight=1.0):
        super().__init__()
        minimax_objective(0., 0., 0., 0., lambda_r, lambda_d, lambda_sr)  # validates the weights
        self.lambda_r, self.lambda_d, self.lambda_sr = lambda_r, lambda_d, lambda_sr
        self.scale = scale
        self.loss_weight = loss_weight
        self.real_memory = FIFOMemory(num_classes, memory_size)
        self.syn_memory = FIFOMemory(num_classes, memory_size)

    def forward(self, pred_x0, labels, real_latents, pred_hr=None, l_simple=0., update_memory=True):
        """``loss_weight * (l_simple + lambda_r L_r + lambda_d L_d + lambda_sr L_SR)``, then update the memories.

        Args:
            pred_x0 (Tensor): (B, C, h, w) predicted clean latents z_hat.
            labels (Tensor): (B,) pseudo-class indices (not the DiT labels).
            real_latents (Tensor): (B, C, h, w) scaled latents of the batch's real patches.
            pred_hr (Tensor | None): (B, 3, H, W) decoded x_hat, about [0, 1]; None skips L_SR. Default: None.
            l_simple (Tensor | float): L_simple, added unweighted. Default: 0.
            update_memory (bool): Push the batch afterwards. Default: True.

        Returns:
            tuple[Tensor, dict]: The loss, and the unweighted terms ``l_r``, ``l_d``, ``l_sr`` (detached).
        """
        l_r = representativeness_loss(pred_x0, labels, self.real_memory)
        l_d = diversity_loss(pred_x0, labels, self.syn_memory)
        l_sr = sr_loss(pred_hr, self.scale) if pred_hr is not None else pred_x0.new_zeros(())
        total = minimax_objective(l_simple, l_r, l_d, l_sr, self.lambda_r, self.lambda_d, self.lambda_sr)
        if update_memory:
            self.real_memory.push(labels, real_latents)
            self.syn_memory.push(labels, pred_x0)
        return self.loss_weight * total, dict(l_r=l_r.detach(), l_d=l_d.detach(), l_sr=l_sr.detach())

    def memory_state_dict(self):
        """Both memories' states, for checkpoints."""
        return dict(real=self.real_memory.state_dict(), syn=self.syn_memory.state_dict())

    def load_memory_state_dict(self, state, device=None):
        """Restore :meth:`memory_state_dict`."""
        self.real_memory.load_state_dict(state['real'], device)
        self.syn_memory.load_state_dict(state['syn'], device)
