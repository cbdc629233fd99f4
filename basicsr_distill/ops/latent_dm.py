"""Distribution matching through a frozen generator with memory bounded by a chunk of latents (GSDD, Eq. 7-9).

The objective depends on the images only through their embeddings f_j = psi(A(G(z_j))), so a step is (1) no-grad
embeddings of all latents, the objective and g_j = dL / df_j; (2) per chunk, ``psi(A(G(z_chunk))).backward(g_chunk)``,
which accumulates exactly dL / dz (docs/Methods_GSDD.md).
"""
import torch


def embed_in_chunks(render_embed, inputs, chunk_size):
    """(K, D) detached embeddings ``render_embed(inputs)`` of (K, ...) inputs, ``chunk_size`` per no-grad pass."""
    with torch.no_grad():
        return torch.cat([render_embed(inputs[i:i + chunk_size]) for i in range(0, inputs.shape[0], chunk_size)])


def objective_and_feature_grad(objective, feat_syn):
    """Value of ``objective(feat_syn)`` and its gradient w.r.t. the (K, D) detached embeddings ``feat_syn``.

    Args:
        objective (callable): (K, D) embeddings -> dict of scalar tensors with the key ``'l_total'``.
        feat_syn (Tensor): (K, D) detached embeddings.

    Returns:
        tuple[dict[str, float], Tensor]: The logged values and dL/dfeat_syn (K, D).
    """
    leaf = feat_syn.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = objective(leaf)
        grad, = torch.autograd.grad(losses['l_total'], leaf)
    return {k: float(v.detach()) for k, v in losses.items()}, grad


def backprop_in_chunks(render_embed, latents, feat_grad, chunk_size):
    """Accumulate dL/dz into ``latents.grad`` ((K, ...) leaf) from ``feat_grad`` = dL/df (K, D), by chunks.

    ``render_embed`` must be step 1's map (same generator, augmentation draw and extractor).
    """
    for i in range(0, latents.shape[0], chunk_size):
        with torch.enable_grad():
            feats = render_embed(latents[i:i + chunk_size])
            feats.backward(feat_grad[i:i + chunk_size])
