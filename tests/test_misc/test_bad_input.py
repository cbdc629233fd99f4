"""Bad input gets a clear error naming the file or option, before expensive work where possible, and nothing
already written is lost.

Cases covered elsewhere (not repeated here):

* LR / HR sizes that do not fit the scale: ``test_data/test_distilled_set.py::test_invalid_pairs_write_nothing``
  (the writer), ``test_data/test_distilled_paired_dataset.py::test_hr_of_wrong_size_names_both_files`` (at
  construction from the PNG header, and when a pair is loaded) and ``::test_wrong_scale_fails_at_construction``.
* a file that is not an image in a GSDD class folder, empty class folders, a class left without images of
  ``gt_size``: ``test_data/test_sr_class_dataset.py::test_errors_name_the_folder``; grayscale / 16-bit / alpha
  images in GSDD classes: ``::test_grayscale_16bit_and_alpha_images``.
* stage-1 images smaller than one patch are skipped:
  ``test_data/test_patch_selection.py::test_images_smaller_than_the_patch_are_skipped``.
* a missing local DiT folder: ``test_models/test_minimax_model.py::test_missing_local_dit_names_the_option``; CLIP
  without local weights: ``test_data/test_patch_selection.py::test_clip_without_local_weights_is_a_clear_error``.
* unknown ``distill`` keys and IDC's r out of range:
  ``test_models/test_idc_model.py::test_bad_options_name_the_option``.
* ``--force_yml`` values get the checks of the same value in the option file: ``test_misc/test_force_yml.py``.
"""
import argparse
import ast
import cv2
import glob
import numpy as np
import os
import os.path as osp
import pytest
import re
import shutil
import torch

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import (G_OPT, IMDN_WEIGHTS, REPO, assert_complete, bare_idc_opt, basicsr_log, build_distill_model,
                      copy_images, data_path, generator_weights, idc_run, train_in_process)

from basicsr_distill import compat
from basicsr_distill.data.distilled_paired_dataset import DistilledPairedDataset
from basicsr_distill.distilled_set import DistilledSetWriter, pair_paths, read_manifest, validate_distilled_set
from basicsr_distill.models import gsdd_model, idc_model, minimax_diffusion_model
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.models.gsdd_model import GSDD_DEFAULTS, GSDDModel
from basicsr_distill.models.idc_model import IDC_DEFAULTS, IDCModel
from basicsr_distill.models.minimax_diffusion_model import MINIMAX_DEFAULTS, MinimaxDiffusionModel
from basicsr_distill.utils.checkpoint import load_network, read_checkpoint
from basicsr_distill.utils.image_io import read_rgb, verify_image
from basicsr_distill.utils.options import merge_options, read_option_file

T91 = ('data', 'train', 't91')


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


# ------------------------------------------------------------------------------------------------ tiny configs
# Bare GSDD and Minimax options like conftest.bare_idc_opt: only the keys the models read (no loader, logger or
# strict-load keys), smaller than conftest's tiny_*_options (IPC 2, 1 inversion step; 1 sample step).
def _gsdd_opt(tmp_path, dataroot, **distill):
    cfg = {
        'ipc': 2,
        'iters_per_class': 2,
        'batch_real': 2,
        'chunk_size': 2,
        'extractor': {
            'num_feat': 4
        },
        'inversion': {
            'iters': 1,
            'w_feat': 0.0
        }
    }
    cfg.update(distill)
    return {
        'name': 'gsdd_bad',
        'model_type': 'GSDDModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'test',
                'type': 'SRClassFolderDataset',
                'dataroot_gt': dataroot,
                'gt_size': 32
            }
        },
        'network_g': dict(G_OPT),
        'path': {
            'pretrain_network_g': generator_weights(tmp_path / 'g.pth'),
            'distilled_root': str(tmp_path / 'distilled'),
            'resume_state': None
        },
        'distill': cfg,
        'train': {
            'total_iter': 10 * cfg['iters_per_class']
        },
    }


def _gsdd_classes(tmp_path):
    root = tmp_path / 'classes'
    copy_images(root / 'a', ['tt1.png', 'tt2.png'])
    copy_images(root / 'b', ['tt3.png', 'tt4.png'])
    return str(root)


def _minimax_opt(tmp_path, hr_folder, finetune_iters=2, **sections):
    cfg = {
        'stage1': {
            'extractor': {
                'type': 'color_gradient'
            },
            'k': 2
        },
        'dit': {
            'config': 'tiny'
        },
        'vae': {
            'config': 'tiny'
        },
        'finetune': {
            'iters': finetune_iters,
            'batch_size': 2,
            'ema_decay': 0.9
        },
        'sample': {
            'images_per_class': 1,
            'steps': 1
        },
    }
    for key, value in sections.items():
        cfg[key] = dict(cfg.get(key) or {}, **value) if isinstance(value, dict) else value
    return {
        'name': 'minimax_bad',
        'model_type': 'MinimaxDiffusionModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'stages',
                'type': 'DistillStageDataset',
                'length': 10,
                'dataroot_gt': hr_folder,
                'gt_size': 64,
                'stride': 64
            }
        },
        'path': {
            'distilled_root': str(tmp_path / 'distilled'),
            'resume_state': None
        },
        'distill': cfg,
        'train': {
            'total_iter': 1 + finetune_iters + 2
        },
    }


def _broken_images(folder):
    """A PNG cut in half, a text file named .png and a JPEG cut in half, in ``folder``: {kind: path}."""
    os.makedirs(folder, exist_ok=True)
    data = open(data_path(*T91, 'tt1.png'), 'rb').read()
    paths = {
        'half_png': osp.join(folder, 'half.png'),
        'text_png': osp.join(folder, 'text.png'),
        'half_jpg': osp.join(folder, 'half.jpg')
    }
    with open(paths['half_png'], 'wb') as f:
        f.write(data[:len(data) // 2])
    with open(paths['text_png'], 'w') as f:
        f.write('not an image\n')
    jpg = cv2.imencode('.jpg', cv2.imread(data_path(*T91, 'tt1.png')))[1].tobytes()
    with open(paths['half_jpg'], 'wb') as f:
        f.write(jpg[:len(jpg) // 2])
    return paths


# ------------------------------------------------------------------------------------- 1. unreadable images
def test_read_rgb_and_verify_image_name_broken_files(tmp_path):
    paths = _broken_images(tmp_path)
    for path in paths.values():  # OpenCV returns None on the PNGs; it decodes the JPEG partially: PIL finds it
        with pytest.raises(ValueError, match=f'cannot read image {path}'):
            read_rgb(path)
    for kind in ('half_png', 'text_png'):  # without decoding: PNG chunks walked to IEND
        with pytest.raises(ValueError, match=paths[kind]):
            verify_image(paths[kind])
    assert verify_image(data_path(*T91, 'tt1.png')) == read_rgb(data_path(*T91, 'tt1.png')).shape[:2]


@pytest.mark.parametrize('kind', ['half_png', 'text_png'])
def test_idc_broken_image_fails_when_the_model_is_built(tmp_path, kind):
    folder = copy_images(tmp_path / 'hr', ['tt1.png'])
    bad = _broken_images(tmp_path / 'bad')[kind]
    shutil.copy(bad, osp.join(folder, 'z' + osp.basename(bad)))
    with pytest.raises(ValueError, match=osp.join(folder, 'z' + osp.basename(bad))):
        build_distill_model(IDCModel, bare_idc_opt(tmp_path, folder))
    assert not osp.exists(tmp_path / 'distilled')  # nothing written


def test_idc_truncated_jpeg_stops_at_its_instance_and_keeps_the_written_ones(tmp_path):
    folder = copy_images(tmp_path / 'hr', ['t20.png'])
    shutil.copy(_broken_images(tmp_path / 'bad')['half_jpg'], osp.join(folder, 'z.jpg'))
    opt = bare_idc_opt(tmp_path, folder)
    model = build_distill_model(IDCModel, opt)  # the JPEG header is fine: found when it is decoded
    for it in (1, 2):
        model.optimize_parameters(it)
    with pytest.raises(ValueError, match=osp.join(folder, 'z.jpg')):
        model.optimize_parameters(3)
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['units_finished'] == ['t20'] and manifest['num_pairs'] == 1


@pytest.mark.parametrize('kind', ['half_png', 'text_png'])
def test_gsdd_broken_image_in_a_class_fails_when_the_model_is_built(tmp_path, kind):
    root = _gsdd_classes(tmp_path)
    bad = osp.join(root, 'b', 'broken.png')
    shutil.copy(_broken_images(tmp_path / 'bad')[kind], bad)
    with pytest.raises(ValueError, match=bad):
        build_distill_model(GSDDModel, _gsdd_opt(tmp_path, root))


@pytest.mark.parametrize('kind', ['half_png', 'text_png', 'half_jpg'])
def test_minimax_broken_stage1_image_fails_before_anything_is_written(tmp_path, kind):
    folder = copy_images(tmp_path / 'hr', ['tt1.png', 'tt2.png'])
    bad = osp.join(folder, 'broken' + osp.splitext(_broken_images(tmp_path / 'bad')[kind])[1])
    shutil.copy(_broken_images(tmp_path / 'bad')[kind], bad)
    opt = _minimax_opt(tmp_path, folder)
    if kind == 'half_jpg':  # the JPEG header is fine: found when stage 1 decodes it
        model = build_distill_model(MinimaxDiffusionModel, opt)
        with pytest.raises(ValueError, match=bad):
            model.optimize_parameters(1)
    else:  # PNGs: before the DiT and VAE are built
        with pytest.raises(ValueError, match=bad):
            build_distill_model(MinimaxDiffusionModel, opt)
    assert not osp.exists(osp.join(opt['path']['distilled_root'] + '_work', 'stage1_selection.json'))


def _tiny_set(root):
    rng = np.random.default_rng(0)
    writer = DistilledSetWriter(root, 'idc', 2, {'folder': 'x', 'num_images': 1}, {'r': 0.1}, {'scale': 2})
    writer.write_unit('u', [{
        'name': f'p{i}',
        'lq': rng.random((8, 8, 3), dtype=np.float32),
        'gt': rng.random((16, 16, 3), dtype=np.float32)
    } for i in range(2)])
    writer.finalize()
    return root


@pytest.mark.parametrize('kind, how', [('hr', 'half'), ('lr', 'text'), ('lr_float', 'half'), ('lr_float', 'text')])
def test_distilled_set_broken_file_fails_at_construction(tmp_path, kind, how):
    root = _tiny_set(str(tmp_path / 'set'))
    path = pair_paths(root, 'p1')[kind]
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2] if how == 'half' else b'not an image or an array\n')
    with pytest.raises(ValueError, match=path):
        DistilledPairedDataset({
            'dataroot': root,
            'scale': 2,
            'phase': 'val',
            'io_backend': {
                'type': 'disk'
            },
            'lq_source': 'float' if kind == 'lr_float' else 'png'
        })


# ---------------------------------------------------------------------- 3. grayscale, alpha, 16-bit, palette
def test_image_kinds_are_converted_as_documented(tmp_path):
    from PIL import Image
    rgb8 = cv2.imread(data_path(*T91, 't20.png'), cv2.IMREAD_COLOR)[:, :, ::-1]  # RGB uint8
    gray8 = cv2.cvtColor(np.ascontiguousarray(rgb8), cv2.COLOR_RGB2GRAY)
    alpha = np.full(gray8.shape, 77, np.uint8)
    gray3 = np.repeat(gray8[..., None], 3, 2) / 255.
    files = {
        'gray8.png': (Image.fromarray(gray8), gray3),
        'gray16.png': (Image.fromarray(gray8.astype(np.uint16) * 257), gray3),
        'gray_alpha.png': (Image.fromarray(np.stack([gray8, alpha], 2), 'LA'), gray3),
        'rgba8.png': (Image.fromarray(np.concatenate([rgb8, alpha[..., None]], 2)), rgb8 / 255.),
        'palette.png': (Image.fromarray(rgb8).quantize(16), None),
    }
    for name, (img, expected) in files.items():
        img.save(tmp_path / name)
        out = read_rgb(str(tmp_path / name))
        assert out.dtype == np.float32 and out.shape == rgb8.shape, name
        if expected is None:  # palette: expanded to the RGB of its palette entries
            expected = np.asarray(img.convert('RGB')) / 255.
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6, err_msg=name)
    bgra16 = np.concatenate([rgb8[:, :, ::-1], alpha[..., None]], 2).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / 'rgba16.png'), bgra16)  # 16-bit with alpha: / 65535, alpha dropped
    np.testing.assert_allclose(read_rgb(str(tmp_path / 'rgba16.png')), rgb8 / 255., rtol=0, atol=1e-6)
    cv2.imwrite(str(tmp_path / 'float.tiff'), rgb8.astype(np.float32) / 255.)
    with pytest.raises(ValueError, match=f'{tmp_path / "float.tiff"} has float32 samples'):
        read_rgb(str(tmp_path / 'float.tiff'))


# ------------------------------------------------------------------------- 4. images smaller than one patch
def test_idc_image_smaller_than_a_patch_is_skipped_with_a_warning_and_recorded(tmp_path):
    folder = tmp_path / 'hr'
    folder.mkdir()
    cv2.imwrite(str(folder / 'tiny.png'), cv2.imread(data_path(*T91, 't1.png'))[:28, :28])
    opt = bare_idc_opt(tmp_path, str(folder))
    model = build_distill_model(IDCModel, opt)
    with basicsr_log() as stream:
        model.optimize_parameters(1)
    assert 'smaller than one 32x32 patch: skipped' in stream.getvalue() and 'tiny.png' in stream.getvalue()
    manifest = validate_distilled_set(opt['path']['distilled_root'], require_complete=True)
    assert manifest['units_finished'] == ['tiny'] and manifest['num_pairs'] == 0


def test_the_small_image_warning_gives_the_file_size_not_the_cropped_one(tmp_path):
    """A 10x10 file is 8x8 once cropped to a multiple of the scale 4: the warning gives the file's own 10x10."""
    folder = tmp_path / 'hr'
    folder.mkdir()
    cv2.imwrite(str(folder / 'ten.png'), cv2.imread(data_path(*T91, 'tt1.png'))[:10, :10])
    cv2.imwrite(str(folder / 'odd.png'), cv2.imread(data_path(*T91, 'tt1.png'))[:37, :45])
    opt = bare_idc_opt(tmp_path, str(folder))
    model = build_distill_model(IDCModel, opt)
    odd, ten = model.source.load_instance(0), model.source.load_instance(1)
    assert ten['hr_shape'] == (10, 10) and ten['lq'].shape[0] == 0
    assert odd['hr_shape'] == (37, 45)  # the patches are still cut from the 36x44 crop, the last ones at its edges
    assert odd['lq'].shape[0] == model.source.num_patches(0) == 4
    assert odd['coords'] == [(0, 0), (0, 12), (4, 0), (4, 12)]
    with basicsr_log() as stream:
        model.optimize_parameters(model.T + 1)  # the first iteration of instance 2 (ten.png)
    log = stream.getvalue()
    assert f'{folder / "ten.png"} (10, 10) is smaller than one 32x32 patch: skipped' in log and '(8, 8' not in log


# ------------------------------------------------------------------------------------------- 5. empty folders
def test_empty_folders_name_the_folder(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('no image here')
    with pytest.raises(FileNotFoundError, match=f'no image found in {empty}'):
        build_distill_model(IDCModel, bare_idc_opt(tmp_path, str(empty)))
    with pytest.raises(FileNotFoundError, match=f'{empty}'):
        build_distill_model(GSDDModel, _gsdd_opt(tmp_path, str(empty)))
    with pytest.raises(FileNotFoundError, match=f'no image found in {empty}'):  # before the DiT / VAE are built
        build_distill_model(MinimaxDiffusionModel, _minimax_opt(tmp_path, str(empty)))
    with pytest.raises(FileNotFoundError, match=osp.join(str(empty), 'distill.json')):
        DistilledPairedDataset({'dataroot': str(empty), 'scale': 4, 'phase': 'val'})
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "nowhere"} does not exist'):
        build_distill_model(IDCModel, bare_idc_opt(tmp_path, str(tmp_path / 'nowhere')))


# ------------------------------------------------------------------------------------- 6. weights that do not fit
def test_missing_or_unfitting_weights_name_the_file_and_list_the_keys(tmp_path):
    folder = copy_images(tmp_path / 'hr', ['t20.png'])
    opt = bare_idc_opt(tmp_path, folder)
    opt['path']['pretrain_network_t'] = str(tmp_path / 'missing.pth')
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'missing.pth')):
        build_distill_model(IDCModel, opt)
    opt['path']['pretrain_network_t'] = generator_weights(tmp_path / 'srvgg.pth')  # another arch's weights
    with pytest.raises(RuntimeError) as err:
        build_distill_model(IDCModel, opt)
    assert str(tmp_path / 'srvgg.pth') in str(err.value) and 'IMDN' in str(err.value)
    assert 'Missing key(s)' in str(err.value) and 'Unexpected key(s)' in str(err.value)

    root = _gsdd_classes(tmp_path)
    for key in ('g', 'f'):
        opt = _gsdd_opt(tmp_path, root, inversion={'iters': 1, 'w_feat': 1.0})
        opt['network_f'] = {'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}
        opt['path']['pretrain_network_f'] = IMDN_WEIGHTS
        opt['path'][f'pretrain_network_{key}'] = IMDN_WEIGHTS if key == 'g' else str(tmp_path / 'srvgg.pth')
        with pytest.raises(RuntimeError) as err:
            build_distill_model(GSDDModel, opt)
        assert opt['path'][f'pretrain_network_{key}'] in str(err.value) and 'Missing key(s)' in str(err.value)

    from safetensors.torch import load_file, save_file

    from basicsr_distill.archs.dit_difffit_arch import TINY_DIT_CONFIG, build_dit
    dit_dir = str(tmp_path / 'dit')
    build_dit(dict(TINY_DIT_CONFIG, num_embeds_ada_norm=2)).save_pretrained(dit_dir)
    weights = osp.join(dit_dir, 'diffusion_pytorch_model.safetensors')
    state = load_file(weights)
    state['extra.weight'] = state.pop('pos_embed.proj.bias')  # diffusers alone would only warn and initialise it
    save_file(state, weights)
    opt = _minimax_opt(tmp_path, copy_images(tmp_path / 'mm', ['tt1.png']), dit={'pretrained': dit_dir, 'config': None})
    with pytest.raises(RuntimeError, match=r"'distill.dit.pretrained'.*pos_embed.proj.bias.*extra.weight"):
        build_distill_model(MinimaxDiffusionModel, opt)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match=r"'distill.dit.pretrained'.*cannot load its weights"):
        build_distill_model(MinimaxDiffusionModel, opt)


# ---------------------------------------------------------------------------------- 7. option keys and types
@pytest.mark.parametrize('model, change, match', [
    ('idc', {
        'ratio': '1e-3'
    }, r"distill.ratio must be a number .* got '1e-3' \(str\).*!!float 1e-3"),
    ('idc', {
        'iters_per_instance': 2.5
    }, r'distill.iters_per_instance must be an int .* got 2.5'),
    ('idc', {
        'rlff': {
            'patch_size': True
        }
    }, r'distill.rlff.patch_size must be an int .* got True'),
    ('idc', {
        'init': 0
    }, r'distill.init must be a string'),
    ('gsdd', {
        'clamp_latents': 1
    }, r'distill.clamp_latents must be a bool .* got 1 \(int\)'),
    ('gsdd', {
        'lam': None
    }, r'distill.lam must be a number .* got None'),
    ('gsdd', {
        'inversion': {
            'iters': '10'
        }
    }, r'distill.inversion.iters must be an int'),
    ('minimax', {
        'finetune': {
            'lr': '1e-3'
        }
    }, r'distill.finetune.lr must be a number'),
    ('minimax', {
        'sample': {
            'scheduler': 3
        }
    }, r'distill.sample.scheduler must be a string'),
    ('minimax', {
        'label_offset': 1.5
    }, r'distill.label_offset must be an int'),
    ('minimax', {
        'bogus': 1
    }, r'unknown option distill.bogus'),
])
def test_wrong_option_types_name_the_option(tmp_path, model, change, match):
    if model == 'idc':
        opt, cls = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png']), **change), IDCModel
    elif model == 'gsdd':
        opt, cls = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path)), GSDDModel
        opt['distill'].update(change)
    else:
        opt, cls = _minimax_opt(tmp_path, copy_images(tmp_path / 'hr', ['tt1.png']), **change), MinimaxDiffusionModel
    with pytest.raises(ValueError, match=match):
        build_distill_model(cls, opt)


def test_compatible_option_types_are_accepted_and_normalised(tmp_path):
    (tmp_path / 'types.yml').write_text('a: !!float 1e-3\nb: 1e-3\nc: 2\nd: 6.0\n')
    loaded = read_option_file(str(tmp_path / 'types.yml'))
    assert loaded['a'] == 1e-3 and loaded['b'] == '1e-3'  # PyYAML: 1e-3 without a dot is a string
    cfg = merge_options(IDC_DEFAULTS, {
        'ratio': loaded['c'] / 4,
        'optim': {
            'lr': loaded['a']
        },
        'iters_per_instance': loaded['d'],
        'weights': {
            'pair': 1
        }
    })
    assert cfg['ratio'] == 0.5 and cfg['optim'] == {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.999]}
    assert cfg['iters_per_instance'] == 6 and type(cfg['iters_per_instance']) is int
    assert cfg['weights']['pair'] == 1.0 and type(cfg['weights']['pair']) is float
    assert merge_options(GSDD_DEFAULTS, {
        'dsa': {
            'strategy': 'none'
        },
        'inversion': {
            'feature_layer': 'x'
        }
    })['dsa'] == {
        'strategy': 'none'
    }  # empty-dict and None defaults take anything
    assert merge_options(MINIMAX_DEFAULTS, {'dit': {'subfolder': None}})['dit']['subfolder'] is None
    with pytest.raises(ValueError, match='option distill must be a mapping'):
        merge_options(IDC_DEFAULTS, 5)


# ---------------------------------------------------------------------------------------- 8. sizes out of range
@pytest.mark.parametrize('model, change, match', [
    ('gsdd', {
        'ipc': 0
    }, r'distill.ipc must be >= 1'),
    ('gsdd', {
        'lam': 1.5
    }, r'distill.lam \(lambda\) must be in \[0, 1\]'),
    ('minimax', {
        'sample': {
            'images_per_class': 0
        }
    }, r'distill.sample.images_per_class must be >= 1'),
    ('minimax', {
        'stage1': {
            'k': 0
        }
    }, r'distill.stage1.k \(pseudo-classes\) must be an int >= 1'),
    ('minimax', {
        'finetune': {
            'iters': 0
        }
    }, r'distill.finetune.iters must be >= 1'),
])
def test_sizes_out_of_range_name_the_option(tmp_path, model, change, match):
    if model == 'gsdd':
        opt, cls = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path), **change), GSDDModel
    else:
        opt, cls = _minimax_opt(tmp_path, copy_images(tmp_path / 'hr', ['tt1.png']), **change), MinimaxDiffusionModel
    with pytest.raises(ValueError, match=match):
        build_distill_model(cls, opt)


@pytest.mark.parametrize('key', ['dataroot_gt', 'gt_size', 'stride', 'meta_info_file'])
def test_minimax_data_options_in_distill_stage1_are_refused_naming_the_new_place(tmp_path, key):
    """Minimax-SR's data options live in datasets.train (as IDC's and GSDD's): the old place gets a clear error."""
    opt = _minimax_opt(tmp_path, copy_images(tmp_path / 'hr', ['tt1.png']), stage1={key: 'x'})
    with pytest.raises(ValueError, match=rf'option distill.stage1.{key} moved to datasets.train.{key}'):
        build_distill_model(MinimaxDiffusionModel, opt)
    assert not osp.exists(opt['path']['distilled_root'])  # refused before anything is written


# --------------------------------------------------------------------------------------------- 9. NaN / Inf
def test_check_finite_checks_losses_then_gradients():
    x = torch.nn.Parameter(torch.ones(2))
    DistillBaseModel.check_finite({'a': torch.tensor(1.), 'b': 2.0}, 'here', [x])  # no grad yet: fine
    with pytest.raises(FloatingPointError, match=r'^here: non-finite loss b \(a=1, b=inf\)'):
        DistillBaseModel.check_finite({'a': torch.tensor(1.), 'b': float('inf')}, 'here')
    x.grad = torch.tensor([0., float('nan')])
    with pytest.raises(FloatingPointError, match=r'^here: non-finite gradient \(finite loss\) \(a=1\)'):
        DistillBaseModel.check_finite({'a': 1.0}, 'here', [x])


def test_idc_nan_loss_stops_before_the_step_and_keeps_the_written_instances(tmp_path, monkeypatch):
    folder = copy_images(tmp_path / 'hr', ['t20.png', 't21.png'])
    opt = bare_idc_opt(tmp_path, folder, T=3)
    model = build_distill_model(IDCModel, opt)
    for it in range(1, 5):  # instance 1 written, one step of instance 2
        model.optimize_parameters(it)
    x_hat, adam = model.inst.x_hat.detach().clone(), model.inst.optimizer.state_dict()['state'][0]['step'].clone()
    original = idc_model.multi_level_ncfd

    def nan_ins(*args, **kwargs):
        l_ins, l_group = original(*args, **kwargs)
        return l_ins * float('nan'), l_group

    monkeypatch.setattr(idc_model, 'multi_level_ncfd', nan_ins)
    with pytest.raises(
            FloatingPointError,
            match=r'IDC instance 2 of 2 \(t21\), iteration 5 \(step 2 of 3\): '
            r'non-finite loss l_ins, l_total \(l_ins=nan, l_group=.*, l_pair=.*, l_total=nan\)'):
        model.optimize_parameters(5)
    assert torch.equal(model.inst.x_hat.detach(), x_hat) and model.inst.x_hat.grad is None
    assert torch.equal(model.inst.optimizer.state_dict()['state'][0]['step'], adam)
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['units_finished'] == ['t20'] and {p['unit'] for p in manifest['pairs']} == {'t20'}
    assert not [f for f in os.listdir(osp.join(opt['path']['distilled_root'], 'hr')) if f.startswith('t21')]


def test_gsdd_nan_objective_stops_before_the_chunked_backward(tmp_path, monkeypatch):
    opt = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path))
    model = build_distill_model(GSDDModel, opt)
    for it in (1, 2, 3):  # class a written, one step of class b
        model.optimize_parameters(it)
    z = model.unit.z.detach().clone()
    monkeypatch.setattr(gsdd_model, 'dm_distance', lambda real, syn: (syn.sum() * float('nan')))
    with pytest.raises(
            FloatingPointError,
            match=r'GSDD class 2 of 2 \(b\), iteration 4 \(step 2 of 2\): '
            r'non-finite loss l_dis, l_total \(l_dis=nan, r=.*, l_total=nan\)'):
        model.optimize_parameters(4)
    assert torch.equal(model.unit.z.detach(), z) and model.unit.z.grad is None
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['units_finished'] == ['a'] and manifest['num_pairs'] == 2 and not manifest['complete']


def test_minimax_inf_loss_stops_stage2_before_the_step(tmp_path, monkeypatch):
    opt = _minimax_opt(
        tmp_path,
        copy_images(tmp_path / 'hr', ['tt1.png', 'tt2.png']),
        finetune_iters=3,
        finetune={'sr_timesteps': [0, 1000]})  # L_SR at every timestep: every term is computed at each step
    model = build_distill_model(MinimaxDiffusionModel, opt)
    for it in (1, 2):  # stage 1 and one fine-tuning step
        model.optimize_parameters(it)
    trainable = set(model.trainable)
    before = {n: p.detach().clone() for n, p in model.dit.named_parameters() if n in trainable}
    ema = {k: v.clone() for k, v in model.ft.ema.state_dict()['shadow'].items()}
    monkeypatch.setattr(minimax_diffusion_model, 'sr_loss', lambda img, scale: img.sum() * float('inf'))
    with pytest.raises(
            FloatingPointError,
            match=r'Minimax-SR stage 2 \(fine-tuning\), iteration 3 \(step 2 of 3\): '
            r'non-finite loss l_sr, l_total \(l_simple=.*, l_sr=-?inf, l_total='):
        model.optimize_parameters(3)
    after = {n: p.detach() for n, p in model.dit.named_parameters() if n in trainable}
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(ema[k], v) for k, v in model.ft.ema.state_dict()['shadow'].items())
    assert not osp.exists(model.stage2_path)
    assert osp.isfile(osp.join(model.work_dir, 'stage1_selection.json'))
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['num_pairs'] == 0 and read_manifest(opt['path']['distilled_root'])['units_finished'] == []


# ---------------------------------------------------------------------------------------- checkpoint loading
def test_every_torch_load_in_the_package_is_weights_only():
    """Each ``torch.load(...)`` call of the package and scripts passes ``weights_only=True`` (no pickled code)."""
    offenders = []
    files = glob.glob(osp.join(REPO, 'basicsr_distill', '**', '*.py'), recursive=True)
    files += glob.glob(osp.join(REPO, 'scripts', '*.py'))
    assert len(files) > 10
    for path in files:
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load' \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch':
                safe = any(k.arg == 'weights_only' and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f'{osp.relpath(path, REPO)}:{node.lineno}')
    assert not offenders, f'torch.load without weights_only=True: {offenders}'


@pytest.mark.parametrize('kind', ['truncated', 'random', 'empty'])
def test_corrupt_or_truncated_checkpoints_name_the_file(tmp_path, kind):
    """Torch's own error does not name the file, and for random bytes advises weights_only=False (unsafe, useless)."""
    with open(IMDN_WEIGHTS, 'rb') as f:
        good = f.read()
    content = {'truncated': good[:len(good) // 2], 'random': np.random.default_rng(0).bytes(4096), 'empty': b''}[kind]
    bad = tmp_path / f'{kind}.pth'
    bad.write_bytes(content)
    net_opt = {'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}
    with pytest.raises(ValueError) as err:
        load_network(net_opt, str(bad))
    message = str(err.value)
    assert message.startswith(f'Cannot read pretrained weights "{bad}": the file is corrupt or truncated (not a valid '
                              f'PyTorch checkpoint')
    assert 'weights_only=False' not in message and 'weights_only' not in message  # no advice to turn it off
    assert err.value.__cause__ is not None  # chained to torch's error, which advises it for random bytes
    assert kind != 'random' or 'weights_only` set to `False' in str(err.value.__cause__)

    opt = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png']))
    opt['path']['pretrain_network_t'] = str(bad)
    with pytest.raises(ValueError, match=f'{re.escape(str(bad))}": the file is corrupt or truncated') as err:
        build_distill_model(IDCModel, opt)
    assert 'weights_only' not in str(err.value)

    state = tmp_path / '5.state'
    state.write_bytes(content)
    with pytest.raises(ValueError) as err:
        compat._load_resume_state_cpu({'auto_resume': False, 'path': {'resume_state': str(state)}})
    assert str(err.value).startswith(f'Cannot read training state (path.resume_state) "{state}": the file is corrupt '
                                     'or truncated') and 'weights_only' not in str(err.value)
    with pytest.raises(FileNotFoundError, match=re.escape(f'Training state not found: "{tmp_path / "6.state"}"')):
        compat._load_resume_state_cpu({'auto_resume': False, 'path': {'resume_state': str(tmp_path / '6.state')}})


def test_a_checkpoint_of_pickled_objects_is_refused_without_the_unsafe_advice(tmp_path):
    path = tmp_path / 'objects.pth'
    torch.save({'params': {'w': torch.zeros(1)}, 'opt': argparse.Namespace(lr=1)}, str(path))
    with pytest.raises(ValueError) as err:
        read_checkpoint(str(path), 'pretrained weights')
    message = str(err.value)
    assert f'"{path}"' in message and 'Unsupported global' in message and 'argparse.Namespace' in message
    assert 'weights_only=False' not in message and 'weights_only` set to `False' not in message


def test_minimax_corrupt_stage2_file_is_named(tmp_path):
    """A corrupt ``stage2_difffit.pth`` (killed disk, edited file) is named as corrupt, not a bare torch error."""
    hr = copy_images(tmp_path / 'hr', ['tt1.png'])
    model = build_distill_model(MinimaxDiffusionModel, _minimax_opt(tmp_path, hr))
    with open(model.stage2_path, 'wb') as f:
        f.write(os.urandom(64))
    with pytest.raises(ValueError, match='corrupt or truncated') as info:
        model._load_stage2()
    assert model.stage2_path in str(info.value) and 'weights_only' not in str(info.value)


@pytest.mark.parametrize('model', ['idc', 'gsdd'])
def test_scale_that_does_not_fit_the_network_is_refused_before_any_unit(tmp_path, model):
    """scale: 3 with a x4 teacher (IDC) or a x4 generator (GSDD): refused at start-up, naming scale and the network."""
    if model == 'idc':
        hr = copy_images(tmp_path / 'hr', ['t20.png'])
        opt, cls, what = bare_idc_opt(tmp_path, hr), IDCModel, r'network_t \(IMDN\)'
    else:
        opt, cls, what = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path)), GSDDModel, r'network_g \(SRVGGNetCompact\)'
    opt['scale'] = 3
    with pytest.raises(ValueError, match=rf'option scale is 3, but {what} up-samples x4'):
        build_distill_model(cls, opt)
    assert not osp.exists(opt['path']['distilled_root'])  # nothing written, no unit computed


@pytest.mark.parametrize('name', ['my image.png', 'caf\u00e9.png'])
def test_idc_input_name_that_gives_an_invalid_pair_name_is_refused_at_start_up(tmp_path, name):
    """A space or a non-ASCII character in an input file name is named at start-up, not after the unit's work."""
    folder = tmp_path / 'hr'
    copy_images(folder, ['t20.png'])
    shutil.copy(data_path(*T91, 't21.png'), folder / name)
    opt = bare_idc_opt(tmp_path, str(folder))
    with pytest.raises(ValueError, match='rename the input') as info:
        build_distill_model(IDCModel, opt)
    assert str(folder / name) in str(info.value) and 'pair name' in str(info.value)
    assert not osp.exists(opt['path']['distilled_root'])


def test_gsdd_class_name_that_gives_an_invalid_pair_name_is_refused_at_start_up(tmp_path):
    root = tmp_path / 'classes'
    copy_images(root / 'a', ['tt1.png', 'tt2.png'])
    copy_images(root / 'my class', ['tt3.png', 'tt4.png'])
    opt = _gsdd_opt(tmp_path, str(root))
    with pytest.raises(ValueError, match=r"class 'my class' of .*rename the input"):
        build_distill_model(GSDDModel, opt)
    assert not osp.exists(opt['path']['distilled_root'])


# ------------------------------------------------------------ late failures caught early (issue 26, items 5, 6)
def _sized(path, h, w):
    """A real image (T91 t1.png) resized to h x w, written to ``path``; returns the path as str."""
    cv2.imwrite(str(path), cv2.resize(cv2.imread(data_path(*T91, 't1.png')), (w, h), interpolation=cv2.INTER_AREA))
    return str(path)


@pytest.mark.parametrize('h, w', [(1, 1), (3, 500), (4, 4), (7, 300), (300, 7)])
def test_idc_image_of_a_few_pixels_is_named_at_start_up_and_recorded_empty(tmp_path, h, w):
    """BasicSR's imresize failed on such images at their instance (a bare RuntimeError naming nothing)."""
    folder = copy_images(tmp_path / 'hr', ['t20.png'])
    tiny = _sized(osp.join(folder, 'tiny.png'), h, w)
    opt = bare_idc_opt(tmp_path, folder)
    with basicsr_log() as stream:
        model = build_distill_model(IDCModel, opt)
    assert f'smaller than one 32x32 patch give no pair (recorded as empty units): tiny.png ({h}, {w})' in \
        stream.getvalue()
    with basicsr_log() as stream:
        for it in range(1, 2 * model.T + 1):
            model.optimize_parameters(it)
    assert f'{tiny} ({h}, {w}) is smaller than one 32x32 patch: skipped, no pair written' in stream.getvalue()
    manifest = validate_distilled_set(opt['path']['distilled_root'], scale=4, check_contents=True)
    assert manifest['units_finished'] == ['t20', 'tiny'] and {p['unit'] for p in manifest['pairs']} == {'t20'}


def test_minimax_images_of_a_few_pixels_are_named_at_start_up(tmp_path):
    folder = tmp_path / 'hr'
    folder.mkdir()
    for name, (h, w) in {'a.png': (1, 1), 'b.png': (3, 500), 'c.png': (7, 300)}.items():
        _sized(folder / name, h, w)
    opt = _minimax_opt(tmp_path, str(folder))
    with pytest.raises(ValueError, match=rf'{folder}: no image is at least 64x64 pixels .*a.png \(1, 1\)'):
        build_distill_model(MinimaxDiffusionModel, opt)  # before the DiT and VAE are built, nothing written
    assert not osp.exists(opt['path']['distilled_root'])
    copy_images(folder, ['tt1.png'])
    with basicsr_log() as stream:
        model = build_distill_model(MinimaxDiffusionModel, opt)
    assert 'stage 1 will skip 3 image(s)' in stream.getvalue() and 'b.png (3, 500)' in stream.getvalue()
    model.optimize_parameters(1)  # stage 1 skips them
    assert [osp.basename(p) for p in {r['path'] for r in model.selection['records']}] == ['tt1.png']


def test_gsdd_class_of_images_of_a_few_pixels_is_an_error_naming_the_class_folder(tmp_path):
    root = _gsdd_classes(tmp_path)
    os.makedirs(osp.join(root, 'c'))
    for name, (h, w) in {'a.png': (1, 1), 'b.png': (4, 4), 'c.png': (7, 300)}.items():
        _sized(osp.join(root, 'c', name), h, w)
    opt = _gsdd_opt(tmp_path, root)
    with pytest.raises(ValueError, match=rf"class 'c' \({osp.join(root, 'c')}\) has 0 image\(s\) of at least 32x32"):
        build_distill_model(GSDDModel, opt)
    assert not osp.exists(opt['path']['distilled_root'])


@pytest.mark.parametrize('kind', ['float32', 'int32'])
def test_tiff_of_float_or_int32_samples_is_refused_when_the_model_is_built(tmp_path, kind):
    """PIL reads a one-channel float32 (or int32) TIFF's header, so it used to pass and stop the run at its unit."""
    from PIL import Image
    gray = cv2.imread(data_path(*T91, 't20.png'), cv2.IMREAD_GRAYSCALE)
    folder = copy_images(tmp_path / 'hr', ['t20.png'])
    path = osp.join(folder, 'z.tiff')
    if kind == 'float32':
        cv2.imwrite(path, gray.astype(np.float32) / 255.)
    else:
        Image.fromarray(gray.astype(np.int32)).save(path)
    with pytest.raises(ValueError, match=f'image {path} has {kind} samples; only 8-bit and 16-bit'):
        verify_image(path)
    opt = bare_idc_opt(tmp_path, folder)
    with pytest.raises(ValueError, match=f'image {path} has {kind} samples'):
        build_distill_model(IDCModel, opt)
    assert not osp.exists(opt['path']['distilled_root'])
    cv2.imwrite(path, cv2.imread(data_path(*T91, 't20.png')).astype(np.uint16) * 257)  # 16-bit: accepted
    assert verify_image(path) == read_rgb(path).shape[:2]


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_weights_holding_nan_or_inf_are_refused_naming_the_file_and_the_tensor(tmp_path, value):
    """They used to end in scikit-learn's 'Input X contains NaN' (IDC's k-means) after the first unit started."""
    state = torch.load(IMDN_WEIGHTS, map_location='cpu', weights_only=True)
    params = state['params'] if 'params' in state else state
    key = sorted(k for k, v in params.items() if v.is_floating_point())[3]
    params[key].view(-1)[0] = value
    bad = str(tmp_path / 'bad_teacher.pth')
    torch.save(state, bad)
    opt = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png']))
    opt['path']['pretrain_network_t'] = bad
    with pytest.raises(ValueError) as err:
        build_distill_model(IDCModel, opt)
    assert f'"{bad}": tensor "{key}" holds 1 non-finite value(s)' in str(err.value)
    assert not osp.exists(opt['path']['distilled_root'])
    gen = torch.load(generator_weights(tmp_path / 'g.pth'), weights_only=True)
    gen['params']['body.0.weight'][0, 0, 0, 0] = value
    torch.save(gen, str(tmp_path / 'bad_g.pth'))
    opt = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path))
    opt['path']['pretrain_network_g'] = str(tmp_path / 'bad_g.pth')
    with pytest.raises(ValueError, match=re.escape(f'"{tmp_path / "bad_g.pth"}": tensor "body.0.weight"')):
        build_distill_model(GSDDModel, opt)


@pytest.mark.parametrize('model, change, match', [
    ('idc', {
        'optim': {
            'lr': -0.01
        }
    }, r'option distill.optim.lr must be >= 0, got -0.01'),
    ('idc', {
        'optim': {
            'lr': float('nan')
        }
    }, r'option distill.optim.lr must be >= 0, got nan'),
    ('idc', {
        'optim': {
            'betas': [0.9]
        }
    }, r'option distill.optim.betas must be a pair \[beta1, beta2\] of numbers in \[0, 1\), got \[0.9\]'),
    ('idc', {
        'optim': {
            'betas': [0.9, 1.5]
        }
    }, r'option distill.optim.betas must be a pair'),
    ('idc', {
        'optim': {
            'type': 'Adamm'
        }
    }, r"option distill.optim.type must name a torch.optim optimiser .* 'Adamm'"),
    ('gsdd', {
        'optim': {
            'lr': -1.0
        }
    }, r'option distill.optim.lr must be >= 0'),
    ('gsdd', {
        'inversion': {
            'lr': 0.0
        }
    }, r'option distill.inversion.lr must be > 0'),
    ('minimax', {
        'finetune': {
            'lr': -1.0e-3
        }
    }, r'option distill.finetune.lr must be >= 0'),
    ('minimax', {
        'finetune': {
            'weight_decay': -0.1
        }
    }, r'option distill.finetune.weight_decay must be >= 0'),
    ('minimax', {
        'finetune': {
            'ema_decay': 1.5
        }
    }, r'option distill.finetune.ema_decay must be in \[0, 1\]'),
])
def test_nonsense_optimiser_options_are_refused_when_the_model_is_built(tmp_path, model, change, match):
    """They used to fail in torch at the first unit, after the set had been created recording them."""
    if model == 'idc':
        opt, cls = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png'])), IDCModel
    elif model == 'gsdd':
        opt, cls = _gsdd_opt(tmp_path, _gsdd_classes(tmp_path)), GSDDModel
    else:
        opt, cls = _minimax_opt(tmp_path, copy_images(tmp_path / 'hr', ['tt1.png'])), MinimaxDiffusionModel
    for section, values in change.items():
        opt['distill'][section] = dict(opt['distill'].get(section) or {}, **values)
    with pytest.raises(ValueError, match=match):
        build_distill_model(cls, opt)
    assert not osp.exists(opt['path']['distilled_root'])


def test_an_empty_set_of_a_run_that_stopped_before_its_first_unit_does_not_block_the_fixed_rerun(tmp_path):
    """A run that stopped at its first unit (e.g. on an option that torch refused) left an empty set recording its
    options; the rerun with the option fixed was refused ('belongs to another run') until the folder was deleted."""
    opt = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png']))
    build_distill_model(IDCModel, opt)  # the set is created; the run stops before any unit
    root = opt['path']['distilled_root']
    opt['distill']['optim'] = {'lr': 0.005}
    with basicsr_log() as stream:
        model = build_distill_model(IDCModel, opt)
    assert 'records another run (options_hash differs (changed options: distill.optim))' in stream.getvalue()
    assert read_manifest(root)['options']['distill']['optim'] == {'lr': 0.005}
    for it in range(1, model.T + 1):
        model.optimize_parameters(it)
    opt['distill']['optim'] = {'lr': 0.02}  # a set holding a unit is still another run's
    with pytest.raises(ValueError, match='distill.json belongs to another run'):
        build_distill_model(IDCModel, opt)
    assert validate_distilled_set(root, scale=4)['units_finished'] == ['t20']


def test_a_start_refused_on_an_option_leaves_nothing_and_the_fixed_rerun_works(tmp_path, monkeypatch):
    """Through basicsr_distill/train.py: distill.optim.lr -0.01 stops the start before any unit, what it created
    is removed, and the rerun with the option fixed (same name, same folders) runs to the end."""
    cwd = str(tmp_path / 'run')
    opt = idc_run(tmp_path)
    opt['distill']['optim'] = {'type': 'Adam', 'lr': -0.01, 'betas': [0.9, 0.999]}
    with pytest.raises(ValueError, match=r'option distill.optim.lr must be >= 0, got -0.01'):
        train_in_process(opt, cwd, monkeypatch)
    assert sorted(os.listdir(cwd)) == ['idc_kill.yml']  # no experiments/, no distilled/
    opt['distill']['optim']['lr'] = 0.01
    train_in_process(opt, cwd, monkeypatch)
    assert_complete(cwd)
