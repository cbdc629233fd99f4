"""Tests of the DiT / VAE builders and DiffFit on tiny random diffusers models (CPU, well under a second each)."""
import copy
import pytest
import time

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision / diffusers)

# isort: split

import torch
from conftest import limited_threads
from diffusers import DiTTransformer2DModel  # (imported here so that tests time compute, not imports)

from basicsr_distill.archs.dit_difffit_arch import (GAMMA_SITES, TINY_DIT_CONFIG, TINY_VAE_CONFIG, apply_difffit,
                                                    build_dit, build_vae, difffit_parameter_names, drop_labels,
                                                    gamma_parameter_names, null_label, pseudo_to_dit_labels,
                                                    set_label_dropout, vae_decode, vae_downsample_factor, vae_encode)

CLASS_TABLE = 'transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight'
# per gamma block: the hooked modules of the four sites
SITE_PARAMS = ['attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out.0', 'attn1', 'ff']


@pytest.fixture(scope='module', autouse=True)
def _threads():
    with limited_threads(1):
        yield


def _tiny_dit(seed=0):
    torch.manual_seed(seed)
    return build_dit(TINY_DIT_CONFIG).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 8, 8, generator=g)
    return x, torch.tensor([0, 500, 999]), torch.tensor([0, 3, 6])


def _out(dit, inputs):
    x, t, y = inputs
    with torch.no_grad():
        return dit(x, timestep=t, class_labels=y).sample


def test_tiny_forward_and_vae_round_trip_shapes():
    dit = _tiny_dit()
    assert _out(dit, _inputs()).shape == (3, 8, 8, 8)  # learned sigma: eps + variance channels
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE_CONFIG).eval()
    assert vae_downsample_factor(vae) == 8 and vae.config.scaling_factor == 0.18215
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z = vae_encode(vae, img, generator=torch.Generator().manual_seed(0))
        assert z.shape == (2, 4, 8, 8) == (2, TINY_DIT_CONFIG['in_channels'], 8, 8)
        assert torch.equal(vae_encode(vae, img, sample=False), vae_encode(vae, img, sample=False))
        assert vae_decode(vae, z).shape == img.shape


def test_build_from_missing_dir_names_option(tmp_path):
    with pytest.raises(FileNotFoundError, match='network_dit.path'):
        build_dit(tmp_path / 'nope', option_name='network_dit.path')
    with pytest.raises(FileNotFoundError, match='pretrained_vae'):
        build_vae(str(tmp_path / 'nope'))
    with pytest.raises(FileNotFoundError, match='config.json'):
        build_dit(tmp_path)  # exists but holds no model


def test_build_from_local_folder_with_subfolder(tmp_path):
    dit, vae = _tiny_dit(), build_vae(TINY_VAE_CONFIG)
    dit.save_pretrained(tmp_path / 'pipe' / 'transformer')
    vae.save_pretrained(tmp_path / 'vae_only')
    loaded = build_dit(tmp_path / 'pipe').eval()  # 'auto' finds transformer/
    inputs = _inputs()
    assert torch.equal(_out(loaded, inputs), _out(dit, inputs))
    assert build_dit(tmp_path / 'pipe', subfolder='transformer').config.num_layers == 2
    assert build_vae(tmp_path / 'vae_only').config.latent_channels == 4
    with pytest.raises(FileNotFoundError, match='vae'):
        build_vae(tmp_path / 'pipe')


def test_config_build_shares_block_embedders():
    dit = _tiny_dit()
    ref = dit.transformer_blocks[0].norm1.emb.state_dict()
    other = dit.transformer_blocks[1].norm1.emb.state_dict()
    assert all(torch.equal(ref[k], other[k]) for k in ref)


def test_difffit_trainable_set_is_exact():
    dit = _tiny_dit()
    names = apply_difffit(dit)  # first half: block 0 of 2 gets gammas
    trainable = [n for n, p in dit.named_parameters() if p.requires_grad]
    assert names == trainable == difffit_parameter_names(dit)
    for n in trainable:
        assert 'bias' in n or 'gamma' in n or n == CLASS_TABLE, n
    expected = {CLASS_TABLE, 'pos_embed.proj.bias', 'proj_out_1.bias', 'proj_out_2.bias'}
    expected |= {f'transformer_blocks.0.norm1.emb.timestep_embedder.linear_{i}.bias' for i in (1, 2)}
    for b in (0, 1):
        expected |= {
            f'transformer_blocks.{b}.{m}.bias'
            for m in ('norm1.linear', 'attn1.to_q', 'attn1.to_k', 'attn1.to_v', 'attn1.to_out.0', 'ff.net.0.proj',
                      'ff.net.2')
        }
    expected |= {f'transformer_blocks.0.{m}.difffit_gamma' for m in SITE_PARAMS}
    assert set(trainable) == expected and len(trainable) == len(expected)
    # everything else is frozen, in particular the weights diffusers keeps under norm1 (adaLN Linear, embedders)
    frozen = {n for n, p in dit.named_parameters() if not p.requires_grad}
    assert 'transformer_blocks.0.norm1.linear.weight' in frozen
    assert 'transformer_blocks.0.norm1.emb.timestep_embedder.linear_1.weight' in frozen
    assert all(n.endswith('weight') for n in frozen)
    # the embedder is shared by every block: one label table
    blocks = dit.transformer_blocks
    assert blocks[1].norm1.emb is blocks[0].norm1.emb
    assert sum('embedding_table' in n for n, _ in dit.named_parameters()) == 1


def test_gammas_once_per_block_start_at_one():
    dit = _tiny_dit()
    apply_difffit(dit, gamma_blocks='all')
    gammas = dict((n, p) for n, p in dit.named_parameters() if 'gamma' in n)
    assert sorted(gammas) == sorted(gamma_parameter_names(dit))
    assert sorted(gammas) == sorted(f'transformer_blocks.{b}.{m}.difffit_gamma' for b in (0, 1) for m in SITE_PARAMS)
    for name, gamma in gammas.items():
        assert gamma.shape == (32, ) and torch.equal(gamma, torch.ones(32)) and gamma.requires_grad, name
    dit2 = _tiny_dit()
    apply_difffit(dit2, gamma_blocks=[1], gamma_sites=('attn', 'ff'))
    assert sorted(gamma_parameter_names(dit2)) == [
        'transformer_blocks.1.attn1.difffit_gamma', 'transformer_blocks.1.ff.difffit_gamma'
    ]


@pytest.mark.parametrize('kwargs', [{}, dict(gamma_blocks='all'), dict(tie_embeddings=False)])
def test_gamma_one_is_identity_and_gamma_changes_output(kwargs):
    inputs = _inputs()
    dit = _tiny_dit()
    plain = _out(dit, inputs)
    apply_difffit(dit, **kwargs)
    assert torch.equal(_out(dit, inputs), plain)
    for name in gamma_parameter_names(dit):
        changed = copy.deepcopy(dit)  # the hooks read the copy's own gammas
        with torch.no_grad():
            dict(changed.named_parameters())[name].mul_(1.5)
        assert not torch.allclose(_out(changed, inputs), plain), name
        assert torch.equal(_out(dit, inputs), plain)


def test_gamma_scales_the_residual_branch_exactly():
    """gamma on the ff site equals scaling the block's ff weights' output: ff.net.2 (weight, bias) * g."""
    inputs = _inputs()
    a, b = _tiny_dit(), _tiny_dit()
    apply_difffit(a, gamma_blocks='all', gamma_sites=('ff', ))
    g = torch.linspace(0.5, 2, 32)
    with torch.no_grad():
        a.transformer_blocks[1].ff.difffit_gamma.copy_(g)
        lin = b.transformer_blocks[1].ff.net[2]
        lin.weight.mul_(g[:, None])
        lin.bias.mul_(g)
    assert torch.allclose(_out(a, inputs), _out(b, inputs), atol=1e-6)


def test_gradients_reach_only_trainable_parameters():
    dit = _tiny_dit()
    apply_difffit(dit)
    x, t, y = _inputs()
    dit(x, timestep=t, class_labels=y).sample.square().mean().backward()
    for name, p in dit.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert dict(dit.named_parameters())['transformer_blocks.0.ff.difffit_gamma'].grad.abs().sum() > 0


def test_norm_match_name_is_the_literal_rule():
    dit = _tiny_dit()
    names = apply_difffit(dit, norm_match='name')
    assert 'transformer_blocks.0.norm1.linear.weight' in names
    assert all(any(k in n for k in ('bias', 'norm', 'gamma', 'class_embedder')) for n in names)


def test_apply_errors():
    dit = _tiny_dit()
    with pytest.raises(ValueError, match='site'):
        apply_difffit(dit, gamma_sites=('mlp', ))
    with pytest.raises(ValueError, match='range'):
        apply_difffit(dit, gamma_blocks=[2])
    assert not gamma_parameter_names(dit)  # nothing changed by the failed calls
    apply_difffit(dit)
    with pytest.raises(RuntimeError, match='already'):
        apply_difffit(dit)
    torch.manual_seed(0)
    raw = DiTTransformer2DModel.from_config(TINY_DIT_CONFIG)  # independent random embedders per block
    with pytest.raises(ValueError, match='tie_embeddings=False'):
        apply_difffit(raw)


def test_label_mapping():
    dit = _tiny_dit()
    assert null_label(dit) == 7
    assert pseudo_to_dit_labels([0, 6], num_labels=7).tolist() == [0, 6]
    assert pseudo_to_dit_labels(torch.tensor([0, 2]), offset=10).tolist() == [10, 12]
    assert pseudo_to_dit_labels(3, label_map=[5, 9, 1, 4]).item() == 4
    with pytest.raises(ValueError, match='null'):
        pseudo_to_dit_labels([7], num_labels=7)  # would hit the null label
    with pytest.raises(ValueError, match='>= 0'):
        pseudo_to_dit_labels([-1])
    labels = pseudo_to_dit_labels(torch.arange(7))
    assert torch.equal(drop_labels(labels, 7, 0.), labels)
    assert torch.equal(drop_labels(labels, 7, 1.), torch.full((7, ), 7))
    set_label_dropout(dit, 0.)
    assert all(m.dropout_prob == 0 for m in dit.modules() if type(m).__name__ == 'LabelEmbedding')
    dit.train()
    inputs = _inputs()
    assert torch.equal(_out(dit, inputs), _out(dit, inputs))  # no random label dropout left in train mode


def test_tiny_models_are_fast():
    start = time.perf_counter()
    dit = _tiny_dit()
    apply_difffit(dit)
    vae = build_vae(TINY_VAE_CONFIG).eval()
    with torch.no_grad():
        z = vae_encode(vae, torch.rand(2, 3, 64, 64))
        _out(dit, (z, torch.tensor([1, 2]), torch.tensor([0, 1])))
        vae_decode(vae, z)
    assert time.perf_counter() - start < 3
    assert set(GAMMA_SITES) == {'qkv', 'attn_proj', 'attn', 'ff'}
