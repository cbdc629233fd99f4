"""FLOPs and activation memory of one step of each paper-scale option file, counted on the CPU: the projection of
docs/Profiling.md ("Paper-scale projection") until ``scripts/gpu_check.sh`` measures the real step times on a GPU.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and backward;
2 FLOPs per multiply-add; element-wise work is not counted) and, for memory, the bytes of the tensors autograd saves
for the backward pass (``saved_tensors_hooks``; a tensor saved by two ops counts twice: an upper estimate):

- IDC (idc_div2k.yml): one real ``IDCModel.step_units`` step at K = 1 after the assignment (all three losses) on
  SwinIR-M x4 with random weights, on a bundled image cut as the GPU check cuts it (LR patches 64 x 64), divided by
  its number of synthetic patches: FLOPs per synthetic patch-iteration; times the patches of a DIV2K image at r = 0.1
  (``--div2k-patches``) for an instance-iteration.
- GSDD (gsdd_ost.yml): real ``GSDDModel.step_unit`` steps on RRDBNet x4 (random weights, HR 256, real batch 64,
  ResNet18 width 64) at IPC 1 and 2 (one chunk), extrapolated linearly to IPC 100 (the step is linear in IPC:
  every latent is rendered twice, once without and once with gradients).
- Minimax-SR (minimax_ost.yml): DiT-XL/2 at 512 px (64 x 64 x 4 latents, DiffFit trainable) and the SD-VAE
  architecture on the meta device (shapes only): per sample the VAE encoding, the DiT forward and backward, and the
  VAE decoding forward and backward of L_SR; a step at batch 8 is 8 encodings and DiT passes and, on average, 2
  decodings (``sr_timesteps`` [0, 250) of 1000); sampling is 50 DiT forwards at batch 2 (guidance) and one decoding.

Prints one JSON object. Usage (from the repository root; about a minute or two on 2 CPU cores)::

    python scripts/profile/flop_projection.py [--div2k-patches 13] [--json out.json]
"""
import argparse
import json
import os
import os.path as osp
import sys
import torch
from torch.utils.flop_counter import FlopCounterMode

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.utils.options import read_option_file

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, osp.join(REPO, 'scripts'))
import gpu_bench  # noqa: E402  (the GPU check's configurations: DiT-XL/2 512, the SD VAE)

CONV_OPS = ('convolution', 'convolution_backward', '_convolution')


class Counter:
    """FLOPs (split into convolutions and matrix products) and saved-activation bytes of the code run inside."""

    def __enter__(self):
        self.flops = FlopCounterMode(display=False)
        self.saved = 0

        def pack(t):
            self.saved += t.numel() * t.element_size()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.flops.__enter__()
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.flops.__exit__(*exc)

    def split(self):
        counts = self.flops.get_flop_counts().get('Global', {})
        conv = sum(v for k, v in counts.items() if any(str(k).split('.')[1].startswith(c) for c in CONV_OPS))
        total = self.flops.get_total_flops()
        return {'total': total, 'conv': conv, 'matmul': total - conv, 'saved_bytes': self.saved}


def _scaled(d, factor):
    return {k: v * factor for k, v in d.items()}


def _meta_network(network_opt):
    from basicsr_distill.utils.checkpoint import build_network
    net = build_network(network_opt).eval().to('meta')  # built on the CPU (SwinIR calls .item()), then shapes only
    net.requires_grad_(False)  # frozen: gradients flow to the input only, as in the methods
    return net


def idc(div2k_patches):
    """The teacher's share of a step (84-89 % on the CPU, see above): the tap's forward and backward per patch."""
    from basicsr_distill.utils.feature_tap import FeatureTap
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_div2k.yml'))
    net = _meta_network(opt['network_t'])
    tap = FeatureTap(net, opt['distill']['feature_layer'])
    x = torch.zeros(1, 3, 64, 64, device='meta', requires_grad=True)
    with Counter() as c:
        tap(x).square().mean().backward()
    per_patch = c.split()
    return {
        'per_patch': per_patch,
        'per_instance_iteration': _scaled(per_patch, div2k_patches),
        'div2k_patches': div2k_patches,
        'weights_bytes': sum(p.numel() * 4 for p in net.parameters())
    }


def gsdd():
    """Per latent: G without gradients (pass 1) and with them (pass 2), each followed by the extractor on the 256 x
    256 image; per step: the 64 real crops and the 100 paired crops through the extractor (no gradients)."""
    from basicsr_distill.archs.dm_resnet_arch import DMResNet18
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'gsdd_ost.yml'))
    g = _meta_network(opt['network_g'])
    with torch.device('meta'):
        ext = DMResNet18(**opt['distill']['extractor']).eval()
    ext.requires_grad_(False)
    z = torch.zeros(1, 3, 64, 64, device='meta', requires_grad=True)
    with Counter() as fb:
        ext(g(z)).square().mean().backward()
    with Counter() as f, torch.no_grad():
        ext(g(z))
    with Counter() as real, torch.no_grad():
        ext(torch.zeros(64 + 100, 3, 256, 256, device='meta'))
    per_latent = {k: fb.split()[k] + f.split()[k] for k in ('total', 'conv', 'matmul')}
    fixed = real.split()
    ipc, chunk = 100, 8
    return {
        'per_latent': per_latent,
        'fixed': fixed,
        'step_ipc100': {
            k: fixed[k] + ipc * per_latent[k]
            for k in ('total', 'conv', 'matmul')
        },
        'saved_bytes_chunk8': chunk * fb.split()['saved_bytes'],
        'weights_bytes': sum(p.numel() * 4 for p in g.parameters())
    }


def minimax():
    from basicsr_distill.archs.dit_difffit_arch import apply_difffit, build_dit, build_vae, vae_decode
    with torch.device('meta'):
        dit = build_dit(dict(gpu_bench.DIT_XL2_512))
        vae = build_vae(dict(gpu_bench.SD_VAE))
    apply_difffit(dit, tie_embeddings=False)  # the tie compares values (not on meta); the FLOPs are the same
    vae.requires_grad_(False)
    z = torch.randn(1, 4, 64, 64, device='meta')
    img = torch.rand(1, 3, 512, 512, device='meta')
    t = torch.tensor([500], device='meta')
    label = torch.tensor([0], device='meta')
    with Counter() as enc, torch.no_grad():
        vae.encode(img * 2 - 1).latent_dist.mean
    with Counter() as dit_fb:
        dit(z, timestep=t, class_labels=label).sample.square().mean().backward()
    x0 = torch.randn(1, 4, 64, 64, device='meta', requires_grad=True)
    with Counter() as dec_fb:
        vae_decode(vae, x0).square().mean().backward()
    with Counter() as dit_f, torch.no_grad():
        dit(torch.cat([z, z]), timestep=t.expand(2), class_labels=torch.cat([label, label])).sample
    with Counter() as dec_f, torch.no_grad():
        vae_decode(vae, z)
    parts = {
        k: c.split()
        for k, c in (('encode', enc), ('dit_fwd_bwd', dit_fb), ('decode_fwd_bwd', dec_fb), ('dit_fwd_batch2', dit_f),
                     ('decode_fwd', dec_f))
    }
    batch, sr_share, steps = 8, 0.25, 50
    step = {
        k: batch * (parts['encode'][k] + parts['dit_fwd_bwd'][k]) + batch * sr_share * parts['decode_fwd_bwd'][k]
        for k in ('total', 'conv', 'matmul')
    }
    sample = {k: steps * parts['dit_fwd_batch2'][k] + parts['decode_fwd'][k] for k in ('total', 'conv', 'matmul')}
    weights = sum(p.numel() * 4 for p in dit.parameters()) + sum(p.numel() * 4 for p in vae.parameters())
    return {
        'parts':
        parts,
        'step_batch8':
        step,
        'sample_per_image':
        sample,
        'saved_bytes_step_batch8':
        batch * parts['dit_fwd_bwd']['saved_bytes'] +
        batch * sr_share * parts['decode_fwd_bwd']['saved_bytes'],  # on average 2 of the 8 decoded with gradients
        'weights_bytes':
        weights
    }


#: Dense peaks of one H100 SXM in TFLOP/s (NVIDIA H100 Tensor Core GPU datasheet, the sparsity figures halved; the
#: H200 has the same compute): FP32 without tensor cores, TF32 and BF16 tensor cores.
PEAK = {'fp32': 66.9, 'tf32': 494.7, 'bf16': 989.4}
SUSTAINED = 0.4  # the assumed sustained fraction of the peak


def seconds(flops, amp):
    """Seconds of ``flops`` ({'conv', 'matmul'}) on one H100 at :data:`SUSTAINED` of the peak. With amp off,
    PyTorch's defaults run convolutions in TF32 (``cudnn.allow_tf32``) and matrix products in FP32
    (``cuda.matmul.allow_tf32`` False); with bf16 both on BF16 tensor cores."""
    if amp == 'bf16':
        return (flops['conv'] + flops['matmul']) / (SUSTAINED * PEAK['bf16'] * 1e12)
    return flops['conv'] / (SUSTAINED * PEAK['tf32'] * 1e12) + flops['matmul'] / (SUSTAINED * PEAK['fp32'] * 1e12)


def table(r):
    """Markdown rows of the projection (docs/Profiling.md) from :func:`main`'s result."""
    rows = []
    idc, g, m = r['idc'], r['gsdd'], r['minimax']
    # K: the most instances whose 13 patches fit 80 GB with their saved activations (about 1.2 GiB per 64 x 64 patch
    # in float32; bf16 assumed to halve the activations)
    for amp, k, act in (('off', 4, 1.0), ('bf16', 8, 0.5)):
        idc_mem = idc['weights_bytes'] + act * k * idc['per_instance_iteration']['saved_bytes']
        g_mem = g['weights_bytes'] + act * g['saved_bytes_chunk8']
        m_mem = m['weights_bytes'] + act * m['saved_bytes_step_batch8']
        h = 800 * 20000 * seconds(idc['per_instance_iteration'], amp) / 3600
        rows.append(('idc_div2k.yml', f'800 images x 20000 iterations (K = {k}), amp {amp}',
                     idc['per_instance_iteration']['total'] / 1e12, h, h / 8, idc_mem))
        h = 7 * 500000 * seconds(g['step_ipc100'], amp) / 3600
        rows.append(('gsdd_ost.yml', f'7 classes x 500000 steps, IPC 100 (chunk 8), amp {amp}',
                     g['step_ipc100']['total'] / 1e12, h, h / 7, g_mem))
        s2, smp = seconds(m['step_batch8'], amp), seconds(m['sample_per_image'], amp)
        h1 = (87500 * s2 + 700 * smp) / 3600
        h8 = (87500 * s2 / 8 + 100 * smp) / 3600
        rows.append(('minimax_ost.yml', f'87500 steps at batch 8 + 7 x 100 images (50 DDIM steps), amp {amp}',
                     m['step_batch8']['total'] / 1e12, h1, h8, m_mem))
    fmt = lambda h: f'{h:.1f} h' if h < 48 else f'{h / 24:.1f} days'  # noqa: E731
    return '\n'.join(f'| {a} | {b} | {c:.2f} | {fmt(d)} | {fmt(e)} | {f / 2**30:.1f} |' for a, b, c, d, e, f in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--div2k-patches', type=float, default=13, help='synthetic LR patches per DIV2K image')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    os.chdir(REPO)
    torch.manual_seed(0)
    result = {
        'commit': gpu_bench.commit(),
        'torch': torch.__version__,
        'idc': idc(args.div2k_patches),
        'gsdd': gsdd(),
        'minimax': minimax()
    }
    text = json.dumps(result, indent=1)
    print(text)
    print(table(result))
    if args.json:
        gpu_bench.write_text(args.json, text)


if __name__ == '__main__':
    main()
