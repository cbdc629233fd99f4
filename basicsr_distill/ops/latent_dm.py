"""Distribution matching through a frozen generator with memory bounded by a chunk of latents (GSDD).

The objective of GSDD (Eq. 7-9) depends on the synthetic images only through their embeddings
f_j = psi(A(G(z_j))), j = 1..K (K = IPC latents of a class): the mean embedding (L_dis) and each f_k against its
paired real image (R). So one step can be computed in two passes over chunks of latents, never holding the graph of
more than ``chunk_size`` latents:

1. no_grad: f_j for all j (chunk by chunk), the objective on these (K, D) embeddings, and its gradient
   g_j = dL / df_j (autograd on the small embedding matrix only);
2. for each chunk: re-run psi(A(G(z_chunk))) with gradients and call ``backward(g_chunk)``, which accumulates
   exactly dL / dz_chunk into ``z.grad`` (the chain rule through f_j touches only chunk j's graph).

This is GLaD's "generate under no_grad, back-propagate to the images, re-run G in chunks" with the extractor
chunked too, so peak memory does not grow with K. The result equals the full-graph gradient (tested).
"""
import torch


def embed_in_chunks(render_embed, inputs, chunk_size):
    """No-grad embeddings of a stack of inputs, ``chunk_size`` at a time.

    Args:
        render_embed (callable): (n, ...) -> (n, D) embedding (e.g. z -> psi(A(G(z)))).
        inputs (Tensor): (K, ...) inputs.
        chunk_size (int): inputs per forward pass.

    Returns:
        Tensor: (K, D) embeddings, detached.
    """
    with torch.no_grad():
        return torch.cat([render_embed(inputs[i:i + chunk_size]) for i in range(0, inputs.shape[0], chunk_size)])


def objective_and_feature_grad(objective, feat_syn):
    """Value of ``objective(feat_syn)`` and its gradient w.r.t. the (K, D) embedding matrix.

    Args:
        objective (callable): (K, D) embeddings -> dict of scalar tensors with the key ``'l_total'``.
        feat_syn (Tensor): (K, D) detached embeddings.

    Returns:
        tuple[dict[str, float], Tensor]: the logged values and dL/dfeat_syn (K, D).
    """
    leaf = feat_syn.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = objective(leaf)
        grad, = torch.autograd.grad(losses['l_total'], leaf)
    return {k: float(v.detach()) for k, v in losses.items()}, grad


def backprop_in_chunks(render_embed, latents, feat_grad, chunk_size):
    """Accumulate dL/dz into ``latents.grad`` from dL/df (pass 2 above).

    Args:
        render_embed (callable): the same map as in pass 1 (same generator, augmentation draw and extractor).
        latents (Tensor): (K, ...) leaf tensor with requires_grad.
        feat_grad (Tensor): (K, D) dL/df from :func:`objective_and_feature_grad`.
        chunk_size (int): latents per backward pass.
    """
    for i in range(0, latents.shape[0], chunk_size):
        with torch.enable_grad():
            feats = render_embed(latents[i:i + chunk_size])
            feats.backward(feat_grad[i:i + chunk_size])
