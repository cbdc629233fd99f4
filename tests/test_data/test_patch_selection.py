"""Minimax-SR stage 1: PSNR_bic patch selection, features, seeded k-means pseudo-labels, the selection file."""
import json
import numpy as np
import os
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401  (compat fixes before transformers / torchvision)

# isort: split
from conftest import data_path

from basicsr_distill.data import patch_selection as ps
from basicsr_distill.data.patch_candidates import iter_patches, select_patches
from basicsr_distill.data.patch_features import cluster_patches, embed_patches
from basicsr_distill.data.sr_class_dataset import kmeans_pseudo_labels
from basicsr_distill.data.sr_patches import bicubic_lr, cut_patch_pairs, modcrop
from basicsr_distill.ops.psnr_bic import psnr_bic
from basicsr_distill.utils.image_io import read_rgb

T91_SUBSET = ['t1.png', 't2.png', 't5.png', 't10.png', 't20.png', 't50.png']  # t20 is 88 pixels wide


@pytest.fixture(scope='module')
def t91():
    return data_path('data', 'train', 't91')


@pytest.fixture(scope='module')
def meta_info(t91, tmp_path_factory):
    """A meta_info file restricting T91 to six images (keeps the tests fast)."""
    path = tmp_path_factory.mktemp('meta') / 'meta_info.txt'
    path.write_text(''.join(f'{name} (x, x, 3)\n' for name in T91_SUBSET))
    return str(path)


@pytest.fixture(scope='module')
def all_candidates(t91, meta_info):
    """Every 48x48 / stride 24 patch of the subset (a threshold no patch reaches)."""
    return select_patches(t91, 48, 24, threshold=1e9, meta_info_file=meta_info)


def _tiny_clip_vision(folder, processor=True):
    """A randomly initialised CLIPVisionModelWithProjection (32 px input, 16 px patches) saved in ``folder``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        projection_dim=8)
    model = CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(folder)
    if processor:
        CLIPImageProcessor(size={'shortest_edge': 32}, crop_size={'height': 32, 'width': 32}).save_pretrained(folder)
    return model


# ------------------------------------------------------------------------------------------------- selection
def test_candidates_are_the_patch_grid_with_psnr_bic(t91, all_candidates):
    records, stats = all_candidates
    assert stats['skipped_images'] == [] and stats['num_images'] == 6
    assert stats['num_candidates'] == stats['num_selected'] == len(records)
    for name in ('t1.png', 't50.png'):  # positions are those of cut_patch_pairs (LR-grid aligned)
        hr = modcrop(read_rgb(osp.join(t91, name)), 4)
        coords = cut_patch_pairs(hr, bicubic_lr(hr, 4), 4, 48, 24)[2]
        assert [(r['y'], r['x']) for r in records if r['path'].endswith(name)] == coords
    for rec in records[::40]:  # the vectorised PSNR_bic equals the imresize one of the patch read here
        patch = read_rgb(rec['path'])[rec['y']:rec['y'] + 48, rec['x']:rec['x'] + 48]
        assert rec['size'] == 48 and rec['psnr_bic'] == pytest.approx(psnr_bic(patch), abs=1e-4)


def test_only_patches_strictly_below_threshold(t91, meta_info, all_candidates):
    candidates = all_candidates[0]
    threshold = float(np.percentile([r['psnr_bic'] for r in candidates], 30))
    records, stats = select_patches(t91, 48, 24, threshold=threshold, meta_info_file=meta_info)
    assert records == [r for r in candidates if r['psnr_bic'] < threshold]
    assert 0 < len(records) < len(candidates) and stats['threshold_db'] == threshold
    exact = records[0]['psnr_bic']  # a patch exactly at the threshold is not kept
    assert records[0] not in select_patches(t91, 48, 24, threshold=exact, meta_info_file=meta_info)[0]


def test_median_threshold_keeps_about_half(t91, meta_info, all_candidates):
    candidates = all_candidates[0]
    records, stats = select_patches(t91, 48, 24, meta_info_file=meta_info)
    median = float(np.median([r['psnr_bic'] for r in candidates]))
    assert stats['threshold_db'] == stats['psnr_bic_median'] == pytest.approx(median)
    assert abs(len(records) - len(candidates) / 2) <= 1
    assert all(r['psnr_bic'] < median for r in records)


def test_select_rejects_bad_geometry(t91):
    with pytest.raises(ValueError, match='multiples of scale=4'):
        select_patches(t91, 48, 10)
    with pytest.raises(ValueError, match='threshold'):
        select_patches(t91, 48, 24, threshold='mean')
    with pytest.raises(FileNotFoundError):
        select_patches(t91 + '_missing', 48, 24)


def test_images_smaller_than_the_patch_are_skipped(t91, meta_info):
    records, stats = select_patches(t91, 96, 96, meta_info_file=meta_info)
    assert stats['skipped_images'] == [osp.join(t91, 't20.png')] and stats['num_images'] == 5
    assert not any(r['path'].endswith('t20.png') for r in records)


# ------------------------------------------------------------------------------------------- features, k-means
def test_color_gradient_features_and_seeded_kmeans(all_candidates):
    records = all_candidates[0]
    feats = embed_patches(records, {'type': 'color_gradient'})
    assert feats.shape == (len(records), 14) and feats.dtype == np.float32
    labels = cluster_patches(feats, k=5, seed=3, normalize='standardize')
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(5)) and labels[0] == 0
    np.testing.assert_array_equal(cluster_patches(feats, k=5, seed=3, normalize='standardize'), labels)
    # the same conventions as the class dataset's pseudo-labels
    np.testing.assert_array_equal(labels, kmeans_pseudo_labels(feats, 5, seed=3))
    np.testing.assert_array_equal(cluster_patches(feats, k=5, seed=3), cluster_patches(feats, k=5, seed=3))


def test_kmeans_finds_separated_clusters_on_the_sphere():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    feats = np.concatenate([c + 0.1 * rng.standard_normal((10, 3)) for c in centres]) * rng.uniform(1, 9, (30, 1))
    labels = cluster_patches(feats, k=3, seed=0, normalize='l2')  # row scales do not matter after l2
    assert labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    with pytest.raises(ValueError, match='distill.stage1.k'):
        cluster_patches(feats, k=31)
    with pytest.raises(ValueError, match='non-empty clusters'):
        cluster_patches(np.ones((5, 2)), k=2)


def test_clip_extractor_from_local_dir(tmp_path, all_candidates):
    records = all_candidates[0][:5]  # 48x48 patches: resized to 32 and centre-cropped by the processor
    folder = str(tmp_path / 'clip')
    model = _tiny_clip_vision(folder)
    feats = embed_patches(records, {'type': 'clip', 'path': folder, 'batch_size': 2, 'device': 'cpu'})
    assert feats.shape == (5, 8) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(embed_patches(records, {'type': 'clip', 'path': folder}), feats, atol=1e-5)
    # reference on 32x32 patches (resize and crop are then identities): 8-bit quantise, CLIP mean / std, model
    small = [dict(r, size=32) for r in records]
    patches = np.stack(list(iter_patches(small)))
    pixels = torch.from_numpy(np.rint(patches * 255) / 255).permute(0, 3, 1, 2).float()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=(pixels - mean) / std).image_embeds.numpy()
    np.testing.assert_allclose(embed_patches(small, {'type': 'clip', 'path': folder}), expected, atol=1e-4)


def test_clip_whole_model_checkpoint_without_processor(tmp_path, all_candidates):
    """The layout of openai/clip-vit-base-patch32 (CLIPModel, projection_dim at the top level)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=99,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16),
        projection_dim=8)
    model = CLIPModel(config).eval()
    folder = str(tmp_path / 'clip_full')
    model.save_pretrained(folder)  # no preprocessor_config.json: CLIP's default preprocessing at 32 px
    records = [dict(r, size=32) for r in all_candidates[0][:3]]
    feats = embed_patches(records, {'type': 'clip', 'path': folder, 'device': 'cpu'})
    pixels = torch.from_numpy(np.rint(np.stack(list(iter_patches(records))) * 255) / 255).permute(0, 3, 1, 2)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=((pixels - mean) / std).float()).pooler_output
        expected = model.visual_projection(expected).numpy()
    np.testing.assert_allclose(feats, expected, atol=1e-4)


def test_clip_without_local_weights_is_a_clear_error(tmp_path, all_candidates):
    records = all_candidates[0][:2]
    for path in (None, str(tmp_path / 'nowhere')):
        with pytest.raises(FileNotFoundError, match=r'distill\.stage1\.extractor\.path.*color_gradient'):
            embed_patches(records, {'type': 'clip', 'path': path})
    (tmp_path / 'config_only').mkdir()
    (tmp_path / 'config_only' / 'config.json').write_text('{"model_type": "clip"}')
    with pytest.raises(FileNotFoundError, match='holds no CLIP checkpoint'):
        embed_patches(records, {'type': 'clip', 'path': str(tmp_path / 'config_only')})
    with pytest.raises(ValueError, match='arch'):
        embed_patches(records, {'type': 'arch'})


# ------------------------------------------------------------------------------------------ file and pipeline
def test_save_load_round_trip_and_broken_files(tmp_path, all_candidates):
    records = all_candidates[0][:6]
    labels = np.array([0, 1, 2, 0, 1, 2])
    meta = {'options': {'k': 3, 'threshold': 'median'}, 'threshold_db': 27.5}
    path = str(tmp_path / 'sub' / 'stage1.json')
    ps.save_selection(path, records, labels, meta)
    assert os.listdir(tmp_path / 'sub') == ['stage1.json']  # the temporary file is gone
    loaded = ps.load_selection(path)
    assert loaded['records'] == records and loaded['meta'] == meta
    np.testing.assert_array_equal(loaded['labels'], labels)
    assert json.load(open(path))['patches'][1]['label'] == 1

    with open(path) as f:
        text = f.read()
    for broken, match in ((text[:len(text) // 2], 'not readable JSON'), ('{"format": "other"}', 'not a stage-1'),
                          (text.replace('"y": 0', '"y": -3', 1), 'patch 0')):
        bad = tmp_path / 'bad.json'
        bad.write_text(broken)
        with pytest.raises(ValueError, match='bad.json'):
            ps.load_selection(str(bad))
        with pytest.raises(ValueError, match=match):
            ps.load_selection(str(bad))
    with pytest.raises(ValueError, match='labels'):
        ps.save_selection(path, records, labels[:3], meta)
    with pytest.raises(ValueError, match='finite'):
        ps.save_selection(path, [dict(records[0], psnr_bic=float('inf'))], [0], meta)
    assert ps.load_selection(path)['records'] == records  # failed saves left the file alone


def test_run_stage1_and_skip_on_rerun(t91, meta_info, tmp_path, monkeypatch):
    opt = {
        'distill': {
            'stage1': {
                'dataroot_gt': t91,
                'meta_info_file': meta_info,
                'gt_size': 48,
                'stride': 24,
                'extractor': {
                    'type': 'color_gradient'
                },
                'k': 4,
                'seed': 1
            }
        },
        'scale': 4
    }
    out = str(tmp_path / 'stage1.json')
    sel = ps.run_stage1(opt, out)
    meta = sel['meta']
    assert meta['options']['threshold'] == 'median' and meta['options']['normalize'] == 'standardize'
    assert meta['num_selected'] == len(sel['records']) and abs(meta['num_selected'] - meta['num_candidates'] / 2) <= 1
    assert all(r['psnr_bic'] < meta['threshold_db'] for r in sel['records'])
    assert sorted(set(sel['labels'].tolist())) == [0, 1, 2, 3] and sum(meta['cluster_sizes']) == len(sel['records'])
    mtime = os.stat(out).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError('stage 1 recomputed although its output exists with the same options')

    with monkeypatch.context() as m:
        m.setattr(ps, 'select_patches', fail)
        again = ps.run_stage1(opt['distill']['stage1'] | {'scale': 4}, out)  # the section alone, same options
    assert again['records'] == sel['records'] and os.stat(out).st_mtime_ns == mtime
    np.testing.assert_array_equal(again['labels'], sel['labels'])

    changed = ps.run_stage1({**opt['distill']['stage1'], 'k': 3}, out)  # other options: recomputed
    assert changed['meta']['options']['k'] == 3 and changed['records'] == sel['records']
    assert set(changed['labels'].tolist()) == {0, 1, 2}
    with open(out, 'w') as f:
        f.write('{broken')
    assert ps.run_stage1(opt, out)['labels'].tolist() == sel['labels'].tolist()  # broken file: recomputed


def test_run_stage1_with_clip_and_option_errors(t91, meta_info, tmp_path, monkeypatch):
    folder = str(tmp_path / 'clip')
    _tiny_clip_vision(folder)
    stage1 = {
        'dataroot_gt': t91,
        'meta_info_file': meta_info,
        'gt_size': 64,
        'stride': 64,
        'k': 2,
        'extractor': {
            'type': 'clip',
            'path': folder,
            'device': 'cpu'
        }
    }
    sel = ps.run_stage1(stage1, str(tmp_path / 'clip.json'))
    assert sel['meta']['feature_dim'] == 8 and sel['meta']['options']['normalize'] == 'l2'
    assert set(sel['labels'].tolist()) == {0, 1}
    with monkeypatch.context() as m:  # batch_size and device change the speed only: still reused
        m.setattr(ps, 'embed_patches', None)
        runtime = {**stage1, 'extractor': {'type': 'clip', 'path': folder, 'batch_size': 3}}
        assert ps.run_stage1(runtime, str(tmp_path / 'clip.json'))['records'] == sel['records']
    with pytest.raises(FileNotFoundError, match=r'distill\.stage1\.extractor\.path'):  # before any selection work
        ps.run_stage1({**stage1, 'extractor': {'type': 'clip'}}, str(tmp_path / 'x.json'))
    with pytest.raises(ValueError, match='unknown distill.stage1 option'):
        ps.run_stage1({**stage1, 'kk': 3}, str(tmp_path / 'x.json'))
    with pytest.raises(ValueError, match='distill.stage1.k'):
        ps.run_stage1({**stage1, 'k': 1000}, str(tmp_path / 'x.json'))
    assert not osp.exists(tmp_path / 'x.json')


def test_instance_patch_count_from_the_header_by_hand(tmp_path):
    """HR 100 x 70, x4, 32 px patches every 16 px: mod-crop 100 x 68 -> LR 25 x 17, 8 px LR patches every 4 px:
    rows 0, 4, 8, 12, 16 + the last 17 (6), columns 0, 4, 8 + the last 9 (4): 24 patches, as load_instance cuts."""
    import cv2

    from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
    folder = tmp_path / 'hr'
    folder.mkdir()
    img = cv2.imread(os.path.join(data_path('data', 'train', 'bsd200'), '100075.png'))[:100, :70]
    cv2.imwrite(str(folder / 'crop.png'), img)
    source = SRInstanceDataset({'dataroot_gt': str(folder), 'scale': 4, 'gt_size': 32, 'stride': 16})
    assert source.hr_shapes == [(100, 70)]
    assert source.num_patches(0) == 24 == source.load_instance(0)['lq'].shape[0]
