"""The steps of ``scripts/gpu_check.sh``: each run as its own process, each writing ``<out>/step_<name>.json``.

One step per call, so that a failing step (an exception, an out-of-memory error, a hang stopped by the shell's
``timeout``) fails alone and its exit status is what the shell collects; ``report`` then reads every step's JSON and
the statuses, writes ``gpu_check.json`` and ``gpu_check.md`` and prints the one-screen summary. Steps (figures: median
step times, peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on the CPU)::

    device   torch, CUDA, the device, Python, the commit
    wheels   .whl/ (scripts/gpu_wheels.sh): the expected wheels exist, install with pip --no-index --no-deps
             --target into an empty folder, and import from it next to the machine's own torch; the requirements the
             wheels leave to the machine are listed (and checked importable where the Python is the GPU machine's)
    tests    the cuda-marked tests (tests/test_models/test_cuda.py); on a GPU none may be skipped
    idc      IDC batched step on SwinIR-M x4 (idc_div2k.yml, random weights) for K = 1, 4, 8, 32, 64 instances per
             step (scripts/profile/benchmark_idc_batch.py; a K out of memory is a figure), and K = 8 with amp bf16
    gsdd     GSDD steps with the paper's RRDBNet x4 generator (gsdd_ost.yml, random weights) at IPC 8 and 100, chunk
             8 (memory flat in IPC), and IPC 100 with distill.amp bf16 (scripts/profile/benchmark_gsdd_memory.py)
    minimax  one Minimax-SR stage-2 step (batch 8) on DiT-XL/2 at 512 px (64x64x4 latents) with the SD-VAE
             architecture (random weights), and 50 DDIM sampling steps of one image
    imdn     the bundled IMDN checkpoint (weights/imdn_baseline.pth) on Set5 (datasets/demo/Set5) on the device and
             on the CPU: the PSNR must agree within 0.01 dB
    report   gpu_check.json, gpu_check.md (figures and the paper-scale projection from the measured step times)

``--cpu-smoke`` runs the same code paths on the CPU at tiny sizes (tiny SwinIR / RRDBNet / DiT / VAE, few steps, K =
1, 2) so that the test suite can run the whole check (tests/test_misc/test_gpu_check.py); its figures time nothing
of interest. The wheel step there also builds a wheel of this package and checks the install-and-import mechanism on
it. ``GPU_CHECK_BREAK=<step>`` makes that step raise at its start (the test of the check's failure path).
Usage (normally through the shell script)::

    python scripts/gpu_bench.py STEP --out DIR [--cpu-smoke] [--wheel-dir .whl] [--site DIR] [--status NAME=RC ...]
"""
import argparse
import datetime
import gc
import glob
import json
import os
import os.path as osp
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
STEPS = ('device', 'wheels', 'tests', 'idc', 'gsdd', 'minimax', 'imdn', 'report')
#: The wheels scripts/gpu_wheels.sh fetches or builds (distribution names, normalised).
EXPECTED_WHEELS = ('addict', 'basicsr', 'diffusers', 'future', 'lmdb', 'mmengine', 'platformdirs', 'termcolor', 'yapf')
#: Modules imported from the installed wheels in the import check.
WHEEL_MODULES = ('basicsr', 'diffusers', 'mmengine', 'addict', 'yapf', 'termcolor', 'lmdb', 'platformdirs')
GPU_PYTHON = (3, 12)  # the GPU machine's Python
#: Paper-scale runs of the option files (docs/Profiling.md, "Paper-scale projection").
PAPER = {
    'idc': {
        'images': 800,
        'iters': 20000
    },  # idc_div2k.yml
    'gsdd': {
        'classes': 7,
        'iters': 500000
    },  # gsdd_ost.yml
    'minimax': {
        'iters': 87500,
        'classes': 7,
        'images_per_class': 10
    },  # minimax_ost.yml (70 epochs at batch 8)
}
#: DiT-XL/2 at 512 px (64x64x4 latents; diffusers' DiTTransformer2DModel config of facebook/DiT-XL-2-512).
DIT_XL2_512 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=64,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type='ada_norm_zero',
    activation_fn='gelu-approximate')
#: The SD VAE's architecture (stabilityai/sd-vae-ft-mse config): 512x512x3 <-> 64x64x4.
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4,
    up_block_types=['UpDecoderBlock2D'] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215)


def log(msg):
    print(f'[gpu_bench] {msg}', flush=True)


def run(cmd, **kwargs):
    """A subprocess whose failure raises with its command and the tail of its output."""
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode:
        raise RuntimeError(f'{" ".join(map(str, cmd))} exited {out.returncode}:\n{out.stdout[-2000:]}\n'
                           f'{out.stderr[-4000:]}')
    return out.stdout


def write_json(path, data):
    """Written to a temporary name and renamed: a step's JSON is whole or absent."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def write_text(path, text):
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def commit():
    try:
        sha = run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO).strip()
        dirty = run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO).strip()
        return sha + (' (plus uncommitted changes)' if dirty else '')
    except Exception as err:  # noqa: BLE001 (a copied tree without .git: say so)
        return f'unknown ({type(err).__name__})'


def device_of(args):
    """The device a step times: CUDA for the GPU check (an error without it), the CPU with --cpu-smoke."""
    import torch
    if args.cpu_smoke:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise RuntimeError('CUDA is not available: scripts/gpu_check.sh needs a GPU; use --cpu-smoke on a CPU')
    return torch.device('cuda')


def peak_mib(device):
    import torch
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


def memory_kind(device):
    return 'CUDA max_memory_allocated' if device.type == 'cuda' else 'process peak RSS'


def dump_options(opt, path):
    import yaml
    with open(path, 'w') as f:
        yaml.safe_dump(json.loads(json.dumps(opt)), f, sort_keys=False)  # OrderedDicts as plain mappings
    return path


def random_weights(network_opt, path, seed=0):
    """Random weights of ``network_opt`` saved under ``params`` (timing only: no checkpoint needed)."""
    import torch

    from basicsr_distill.utils.checkpoint import build_network
    from basicsr_distill.utils.file_io import torch_save_atomic
    torch.manual_seed(seed)
    torch_save_atomic(path, {'params': build_network(network_opt).state_dict()})
    return path


# ---------------------------------------------------------------------------------------------------------- steps
def step_device(args):
    import torch
    info = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'cuda_available': torch.cuda.is_available(),
        'commit': commit(),
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'mode': 'cpu-smoke' if args.cpu_smoke else 'gpu',
    }
    dev = device_of(args)
    if dev.type == 'cuda':
        p = torch.cuda.get_device_properties(0)
        info.update(
            device=p.name,
            memory_gib=round(p.total_memory / 2**30, 1),
            sm=f'{p.major}.{p.minor}',
            sms=p.multi_processor_count)
    else:
        info.update(device=f'CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads')
    return info


def _wheel_name(path):
    return osp.basename(path).split('-')[0].lower().replace('_', '-')


def _wheel_requirements(paths):
    """Requires-Dist names (no extra) of the wheels, minus the wheels themselves: what the machine must provide."""
    import zipfile
    have = {_wheel_name(p) for p in paths}
    needed = set()
    for p in paths:
        with zipfile.ZipFile(p) as z:
            meta = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
            for line in z.read(meta).decode('utf-8', 'replace').splitlines():
                if line.startswith('Requires-Dist:') and 'extra ==' not in line:
                    req = line.split(':', 1)[1].strip()
                    name = req.split(';')[0].split('[')[0]
                    for sep in '<>=!~ (':
                        name = name.split(sep)[0]
                    needed.add(name.strip().lower().replace('_', '-'))
    return sorted(needed - have - {''})


def _import_check(site, modules, cwd, first=()):
    """Import ``first`` then ``modules`` (and torch) in a fresh interpreter with ``site`` first on the path, the
    repository after it when ``first`` is given (``basicsr_distill`` applies its compat fixes before anything imports
    torchvision, as in every use); returns their files.

    Raises:
        RuntimeError: An import fails, one of ``modules`` does not come from ``site``, or torch comes from ``site``
            (the machine's own torch must be used).
    """
    order = ['torch', *first, *modules]
    code = ('import importlib, json\n'
            f'out = {{m: importlib.import_module(m).__file__ for m in {order!r}}}\n'
            'print(json.dumps(out))\n')
    path = site + (f'{os.pathsep}{REPO}' if first else '')
    env = dict(os.environ, PYTHONPATH=path, PYTHONNOUSERSITE='1')
    files = json.loads(run([sys.executable, '-c', code], cwd=cwd, env=env).strip().splitlines()[-1])
    site_abs = osp.realpath(site)
    if osp.realpath(files['torch']).startswith(site_abs):
        raise RuntimeError(f'torch was imported from {site} (the wheels must not bring their own torch)')
    wrong = [m for m in modules if not osp.realpath(files[m]).startswith(site_abs)]
    if wrong:
        raise RuntimeError(f'{wrong} were not imported from {site}: {[files[m] for m in wrong]}')
    return files


def _pip_target(wheels, target, extra=()):
    if os.path.exists(target) and os.listdir(target):
        raise RuntimeError(f'{target} is not empty: the wheel check installs into an empty folder')
    run([
        sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--no-index', '--no-deps',
        '--no-compile', '--no-cache-dir', '--target', target, *extra, *wheels
    ])


def step_wheels(args):
    """See the module docstring; on the GPU machine ``--site`` is the folder the check then puts on PYTHONPATH."""
    info = {}
    wheel_dir = osp.join(REPO, args.wheel_dir) if not osp.isabs(args.wheel_dir) else args.wheel_dir
    wheels = sorted(glob.glob(osp.join(wheel_dir, '*.whl')))
    work = tempfile.mkdtemp(prefix='gpu_check_wheels_')
    try:
        if not wheels:
            if not args.cpu_smoke:
                raise FileNotFoundError(f'{wheel_dir} has no wheels: run bash scripts/gpu_wheels.sh where the package '
                                        'registry is reachable, and carry .whl with the working tree')
            info['gpu_wheels'] = (f'SKIP: {args.wheel_dir}/ absent (made by scripts/gpu_wheels.sh): the GPU machine\'s '
                                  'wheel set not checked; the install-and-import mechanism is checked on a wheel of '
                                  'basicsr_distill below')
            log(info['gpu_wheels'])
        else:
            names = sorted({_wheel_name(p) for p in wheels})
            missing = sorted(set(EXPECTED_WHEELS) - set(names))
            if missing:
                raise FileNotFoundError(f'{wheel_dir} lacks the wheels of {missing}: run bash scripts/gpu_wheels.sh')
            info.update(wheels=[osp.basename(p) for p in wheels], left_to_the_machine=_wheel_requirements(wheels))
            same = sys.version_info[:2] == GPU_PYTHON
            site = args.site or osp.join(work, 'site')
            if same:  # the GPU machine's Python: install all, import all from there next to the machine's torch
                _pip_target(wheels, site)
                info['installed_to'] = site
                info['imported'] = _import_check(site, WHEEL_MODULES, cwd=work, first=['basicsr_distill'])
                probe = ('import importlib.metadata as m, json, sys\n'
                         f'need = {info["left_to_the_machine"]!r}\n'
                         'miss = []\n'
                         'for n in need:\n'
                         '    try:\n'
                         '        m.distribution(n)\n'
                         '    except m.PackageNotFoundError:\n'
                         '        miss.append(n)\n'
                         'print(json.dumps(miss))\n')
                miss = json.loads(run([sys.executable, '-c', probe], cwd=work).strip().splitlines()[-1])
                if miss:
                    raise RuntimeError(f'the wheels need {miss}, which this machine\'s Python lacks: add them to '
                                       'scripts/gpu_wheels.sh')
            else:  # here: install for the GPU machine's Python 3.12, import the pure-Python wheels with this one
                plat = [
                    '--python-version', '.'.join(map(str, GPU_PYTHON)), '--implementation', 'cp', '--only-binary=:all:',
                    '--platform', 'manylinux_2_28_x86_64', '--platform', 'manylinux_2_17_x86_64', '--platform',
                    'manylinux2014_x86_64', '--platform', 'any'
                ]
                _pip_target(wheels, site, plat)
                info['installed_for'] = f'Python {GPU_PYTHON[0]}.{GPU_PYTHON[1]} (--python-version, empty folder)'
                mods = [m for m in WHEEL_MODULES if m != 'lmdb']  # the cp312 lmdb cannot load here
                info['imported'] = _import_check(site, mods, cwd=work, first=['basicsr_distill'])
                info['note'] = (f'this Python is {platform.python_version()}, not {GPU_PYTHON[0]}.{GPU_PYTHON[1]}: '
                                'all installed for 3.12, the pure-Python ones imported here next to this torch (not '
                                'the binary lmdb)')
            log(f'wheels: {len(wheels)} installed into an empty folder and imported '
                f'(left to the machine: {", ".join(info["left_to_the_machine"])})')
        if args.cpu_smoke:  # the mechanism, on a wheel of this package built here
            src = osp.join(work, 'src')
            os.makedirs(src)
            for name in ('setup.py', 'setup.cfg', 'README.md'):
                shutil.copy(osp.join(REPO, name), src)
            shutil.copytree(
                osp.join(REPO, 'basicsr_distill'),
                osp.join(src, 'basicsr_distill'),
                ignore=shutil.ignore_patterns('__pycache__'))
            run([
                sys.executable, '-m', 'pip', 'wheel', '-q', '--disable-pip-version-check', '--no-deps',
                '--no-build-isolation', '--no-index', '-w',
                osp.join(work, 'own'), src
            ],
                cwd=src)
            own = glob.glob(osp.join(work, 'own', '*.whl'))
            target = osp.join(work, 'own_site')
            _pip_target(own, target)
            files = _import_check(target, ['basicsr_distill'], cwd=work)
            info['own_wheel'] = {'wheel': osp.basename(own[0]), 'imported': files}
            log(f'own wheel {osp.basename(own[0])}: installed into an empty folder, basicsr_distill imported from it '
                f'next to torch {files["torch"]}')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def step_tests(args):
    """The cuda-marked tests; on a GPU every one must run (none skipped) and pass."""
    import xml.etree.ElementTree as ET
    xml = osp.join(args.out, 'gpu_tests.xml')
    cmd = [
        sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', '-m', 'cuda', '--junitxml', xml,
        'tests/test_models/test_cuda.py'
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    write_text(osp.join(args.out, 'gpu_tests.txt'), out.stdout + out.stderr)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    log(f'tests: {counts}')
    if out.returncode or counts['failures'] or counts['errors']:
        raise RuntimeError(f'cuda tests failed (pytest exit {out.returncode}, {counts}):\n{out.stdout[-3000:]}')
    if not args.cpu_smoke and (counts['skipped'] or not counts['tests']):
        raise RuntimeError(f'cuda tests skipped on a GPU machine ({counts}):\n{out.stdout[-3000:]}')
    return counts


def step_idc(args):
    """scripts/profile/benchmark_idc_batch.py on idc_div2k.yml (tiny SwinIR under --cpu-smoke)."""
    import basicsr_distill  # noqa: F401
    from basicsr_distill.utils.options import read_option_file
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_div2k.yml'))
    smoke = args.cpu_smoke
    tmp = tempfile.mkdtemp(prefix='gpu_check_idc_')
    try:
        common = ['--random-weights', '--dataroot', 'datasets/demo/train_hr', '--ratio', '0.2']
        if smoke:
            opt['network_t'].update(embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=1)
            opt['distill']['ncfd'].update(num_freqs=64, bank_size=256)
            common += ['--gt-size', '64', '--stride', '64', '--repeats', '2', '--warmup', '1']
            runs = [('off', [1, 2])]  # the bf16 path: tests/test_models/test_amp.py
        else:
            common += ['--gt-size', '256', '--stride', '16', '--repeats', '10']
            # about 1.2 GiB of saved activations per 64 x 64 patch (docs/Profiling.md): K = 32, 64 are expected to run
            # out of memory, which is recorded as a figure (the step fails only when every K does)
            runs = [('off', [1, 4, 8, 32, 64]), ('bf16', [8])]
        rows = []
        for amp, ks in runs:
            opt['distill']['amp'] = amp
            path = dump_options(opt, osp.join(tmp, f'idc_{amp}.yml'))
            js = osp.join(tmp, f'idc_{amp}.json')
            cmd = [
                sys.executable, 'scripts/profile/benchmark_idc_batch.py', '-opt', path, *common, '--ks', *map(str, ks),
                '--paper-iters',
                str(PAPER['idc']['images']),
                str(PAPER['idc']['iters']), '--json', js
            ]
            print(run(cmd, cwd=REPO), end='', flush=True)
            with open(js) as f:
                rows += [dict(r, amp=amp) for r in json.load(f)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {'teacher': 'SwinIR (tiny)' if smoke else 'SwinIR-M x4 (idc_div2k.yml)', 'rows': rows}


def _class_folders(root, hr_min):
    """Two class folders of bundled demo images (links) at least ``hr_min`` on each side."""
    import cv2
    for path in sorted(glob.glob(osp.join(REPO, 'datasets', 'demo', 'train_hr', '*.png'))):
        h, w = cv2.imread(path).shape[:2]
        if min(h, w) >= hr_min:
            cls = 'bsd' if osp.basename(path)[0].isdigit() else 'tt'
            os.makedirs(osp.join(root, cls), exist_ok=True)
            os.symlink(path, osp.join(root, cls, osp.basename(path)))
    return root


def step_gsdd(args):
    """scripts/profile/benchmark_gsdd_memory.py (one process per run) on gsdd_ost.yml with random weights."""
    import basicsr_distill  # noqa: F401
    from basicsr_distill.utils.options import read_option_file
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'gsdd_ost.yml'))
    smoke = args.cpu_smoke
    tmp = tempfile.mkdtemp(prefix='gpu_check_gsdd_')
    try:
        gt = 32 if smoke else 256
        if smoke:
            opt['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
            opt['distill'].update(batch_real=4, chunk_size=2)
            opt['distill']['extractor'] = dict(opt['distill']['extractor'], num_feat=4)
            runs, steps = [(2, 'off'), (4, 'off')], 1
        else:
            runs, steps = [(8, 'off'), (100, 'off'), (100, 'bf16')], 2
        opt['datasets']['train'].update(dataroot_gt=_class_folders(osp.join(tmp, 'classes'), gt), gt_size=gt)
        opt['datasets']['train'].pop('classes', None)
        opt.pop('network_f', None)
        opt['distill']['inversion'] = dict(opt['distill']['inversion'], w_feat=0.0, iters=0)
        opt['path'].update(
            pretrain_network_g=random_weights(opt['network_g'], osp.join(tmp, 'g.pth')),
            param_key_g='params',
            distilled_root=osp.join(tmp, 'distilled'))
        for key in ('pretrain_network_f', 'strict_load_f'):
            opt['path'].pop(key, None)
        opt['path']['ignore_resume_networks'] = ['network_g']
        chunk = int(opt['distill']['chunk_size'])
        rows = []
        for ipc, amp in runs:
            opt['distill']['amp'] = amp
            path = dump_options(opt, osp.join(tmp, f'gsdd_{amp}.yml'))
            cmd = [
                sys.executable, 'scripts/profile/benchmark_gsdd_memory.py', '-opt', path, '--steps',
                str(steps), '--child',
                str(ipc),
                str(min(chunk, ipc))
            ]
            row = json.loads(run(cmd, cwd=REPO).strip().splitlines()[-1])
            rows.append(dict(row, amp=amp))
            log(f'gsdd IPC {ipc} chunk {row["chunk"]} amp {amp}: {row["step_s"]:.3f} s/step, '
                f'peak {row["peak_mib"]:.0f} MiB')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    off = [r for r in rows if r['amp'] == 'off']
    growth = off[-1]['peak_mib'] - off[0]['peak_mib']
    info = {
        'generator': 'RRDBNet (tiny)' if smoke else 'RRDBNet x4 (64 feat, 23 blocks; gsdd_ost.yml)',
        'rows': rows,
        'peak_growth_mib': growth,
        'memory_flat': None
    }
    if not smoke:  # on CUDA the allocator's peak is exact: chunked, IPC 8 -> 100 may add only the held tensors
        info['memory_flat'] = growth < 0.25 * off[0]['peak_mib'] + 512
        if not info['memory_flat']:
            raise RuntimeError(f'GSDD peak memory grew by {growth:.0f} MiB from IPC {off[0]["ipc"]} to '
                               f'{off[-1]["ipc"]} (chunk {chunk}): the chunked passes should keep it flat')
    return info


def _minimax_images(folder, side, count):
    """``count`` bundled demo images resized to ``side`` x ``side`` (PNG), for patches of the DiT's image size."""
    import cv2
    os.makedirs(folder)
    for path in sorted(glob.glob(osp.join(REPO, 'datasets', 'demo', 'train_hr', '*.png')))[:count]:
        img = cv2.imread(path)
        if side:
            img = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(osp.join(folder, osp.basename(path)), img)
    return folder


def step_minimax(args):
    """One stage-2 step (and a few more, median) and the sampling of one image, on minimax_ost.yml's sizes."""
    import torch

    import basicsr_distill  # noqa: F401
    from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel
    from basicsr_distill.utils.options import build_model_from_options, read_option_file
    dev = device_of(args)
    smoke = args.cpu_smoke
    rows = []
    for amp in ('off', ) if smoke else ('off', 'bf16'):
        opt = read_option_file(osp.join(REPO, 'options', 'distill', 'minimax_ost.yml'))
        tmp = tempfile.mkdtemp(prefix='gpu_check_minimax_')
        try:
            d, ft, smp = opt['distill'], opt['distill']['finetune'], opt['distill']['sample']
            if smoke:
                d['dit'], d['vae'] = {'config': 'tiny'}, {'config': 'tiny'}
                hr, images, steps, sample_steps, batch, k = 64, _minimax_images(osp.join(tmp, 'hr'), 0, 6), 2, 3, 4, 3
            else:
                d['dit'], d['vae'] = {'config': dict(DIT_XL2_512)}, {'config': dict(SD_VAE)}
                hr, images, steps, sample_steps, batch, k = 512, _minimax_images(osp.join(tmp, 'hr'), 576,
                                                                                 8), 3, 50, 8, 7
            opt['datasets']['train'].update(dataroot_gt=images, gt_size=hr, stride=64)
            d['stage1'] = dict(d['stage1'], extractor={'type': 'color_gradient'}, k=k)
            d['work_dir'] = osp.join(tmp, 'work')
            d['amp'] = amp
            ft.update(iters=steps + 1, batch_size=batch)
            smp.update(images_per_class=1, steps=sample_steps)
            opt['train']['total_iter'] = 1 + steps + 1 + k
            model = build_model_from_options(
                opt,
                root=tmp,
                distilled_root=osp.join(tmp, 'distilled'),
                num_gpu='auto',
                model_cls=MinimaxDiffusionModel)
            if model.device.type != dev.type:
                raise RuntimeError(f'Minimax-SR model on {model.device}, expected {dev}')
            model.optimize_parameters(1)  # stage 1 (selection, features, k-means, the patch store)
            model.optimize_parameters(2)  # the first stage-2 step (warm-up: cuDNN / allocator)
            reset_peak(dev)
            times = []
            for it in range(3, steps + 3):  # the last of them also writes stage2_difffit.pth
                sync(dev)
                start = time.perf_counter()
                model.optimize_parameters(it)
                sync(dev)
                times.append(time.perf_counter() - start)
            step_peak = peak_mib(dev)
            reset_peak(dev)
            sync(dev)
            start = time.perf_counter()
            imgs, _ = model.sample_class(0)
            sync(dev)
            sample_s = time.perf_counter() - start
            if not torch.isfinite(imgs).all():
                raise FloatingPointError(f'Minimax-SR sampling (amp {amp}) gave non-finite pixels')
            rows.append({
                'amp': amp,
                'step_s': statistics.median(times),
                'steps_timed': len(times),
                'batch': batch,
                'latents': list(model.ft_latent_shape) if model.ft_latent_shape is not None else None,
                'step_peak_mib': step_peak,
                'sample_s_per_image': sample_s / len(imgs),
                'sample_steps': sample_steps,
                'sample_peak_mib': peak_mib(dev),
                'image': list(imgs.shape[1:]),
            })
            log(f'minimax amp {amp}: step {rows[-1]["step_s"]:.3f} s (batch {batch}), peak {step_peak:.0f} MiB; '
                f'sampling {rows[-1]["sample_s_per_image"]:.2f} s per image ({sample_steps} DDIM steps)')
        except torch.cuda.OutOfMemoryError as err:  # batch 8 of DiT-XL/2 + decoding may not fit: a figure too
            rows.append({'amp': amp, 'oom': True, 'error': str(err).splitlines()[0]})
            log(f'minimax amp {amp}: out of memory ({rows[-1]["error"][:100]})')
        finally:
            model = None
            gc.collect()
            if dev.type == 'cuda':
                torch.cuda.empty_cache()
            shutil.rmtree(tmp, ignore_errors=True)
    if all(r.get('oom') for r in rows):
        raise RuntimeError(f'Minimax-SR: out of memory with every amp setting: {rows}')
    return {
        'dit': 'DiT (tiny)' if smoke else 'DiT-XL/2 at 512 px (random weights)',
        'vae': 'VAE (tiny)' if smoke else 'SD-VAE architecture (random weights)',
        'memory': memory_kind(dev),
        'rows': rows
    }


def step_imdn(args):
    """weights/imdn_baseline.pth on Set5 on the device and on the CPU: Y-PSNR within 0.01 dB."""
    import basicsr_distill  # noqa: F401
    from basicsr_distill.utils.checkpoint import load_network
    from basicsr_distill.utils.sr_metrics import evaluate_network
    dev = device_of(args)
    sets = {'Set5': (osp.join(REPO, 'datasets/demo/Set5/HR'), osp.join(REPO, 'datasets/demo/Set5/LR_bicubic/X4'))}
    net = load_network({
        'type': 'IMDN',
        'block_type': 'imdb_ntire22',
        'upscale': 4
    }, osp.join(REPO, 'weights', 'imdn_baseline.pth'))
    psnr = {}
    for where in ('cpu', str(dev)):
        psnr[where] = evaluate_network(
            net, sets, scale=4, metrics=('psnr', ), device=where)['test_sets']['Set5']['psnr']
    diff = abs(psnr[str(dev)] - psnr['cpu'])
    log(f'IMDN Set5 PSNR: CPU {psnr["cpu"]:.4f} dB, {dev} {psnr[str(dev)]:.4f} dB, difference {diff:.4f} dB')
    if diff > 0.01:
        raise RuntimeError(f'IMDN (weights/imdn_baseline.pth) Set5 PSNR on {dev} {psnr[str(dev)]:.4f} dB differs from '
                           f'the CPU\'s {psnr["cpu"]:.4f} dB by more than 0.01 dB')
    return {
        'checkpoint': 'weights/imdn_baseline.pth',
        'psnr_cpu': psnr['cpu'],
        'psnr_device': psnr[str(dev)],
        'device': str(dev),
        'difference_db': diff
    }


# ---------------------------------------------------------------------------------------------------------- report
def projection(figures):
    """Wall time (hours) and peak memory of the paper-scale runs from the measured step times, on one device and on
    8 (torchrun: IDC splits the images, GSDD and Minimax-SR's sampling the classes, Minimax-SR's stage 2 the batch).

    Returns:
        list[dict]: rows ``{'run', 'setting', 'hours_1', 'hours_8', 'peak_mib', 'basis'}``.
    """
    rows = []
    idc = figures.get('idc')
    done = [r for r in (idc or {}).get('rows', []) if not r.get('oom')]
    if done:
        best = max(done, key=lambda r: r['inst_iters_per_s'])
        p = PAPER['idc']
        hours = p['images'] * p['iters'] / best['inst_iters_per_s'] / 3600
        rows.append({
            'run': 'idc_div2k.yml',
            'setting': f'{p["images"]} images x {p["iters"]} iterations, K = {best["k"]}, amp {best["amp"]}',
            'hours_1': hours,
            'hours_8': hours / 8,
            'peak_mib': best['peak_mib'],
            'basis': f'{best["inst_iters_per_s"]:.2f} instance-iterations / s'
        })
    gsdd = figures.get('gsdd')
    if gsdd and gsdd.get('rows'):
        p = PAPER['gsdd']
        top = max(r['ipc'] for r in gsdd['rows'])
        for r in (r for r in gsdd['rows'] if r['ipc'] == top):
            hours = p['classes'] * p['iters'] * r['step_s'] / 3600
            rows.append({
                'run': 'gsdd_ost.yml',
                'setting':
                f'{p["classes"]} classes x {p["iters"]} steps, IPC {r["ipc"]}, chunk {r["chunk"]}, amp {r["amp"]}',
                'hours_1': hours,
                'hours_8': hours / p['classes'],  # one class per process, 7 of the 8 busy
                'peak_mib': r['peak_mib'],
                'basis': f'{r["step_s"]:.3f} s / step (GAN inversion not included)'
            })
    mm = figures.get('minimax')
    if mm and mm.get('rows'):
        p = PAPER['minimax']
        for r in (r for r in mm['rows'] if not r.get('oom')):
            stage2 = p['iters'] * r['step_s'] / 3600
            sample = p['classes'] * p['images_per_class'] * r['sample_s_per_image'] / 3600
            rows.append({
                'run':
                'minimax_ost.yml',
                'setting':
                (f'{p["iters"]} steps at batch {r["batch"]} + {p["classes"]} x {p["images_per_class"]} images '
                 f'({r["sample_steps"]} DDIM steps), amp {r["amp"]}'),
                'hours_1':
                stage2 + sample,
                'hours_8':
                stage2 / 8 + sample / p['classes'],  # stage 2: batch split (communication not counted)
                'peak_mib':
                max(r['step_peak_mib'], r['sample_peak_mib']),
                'basis':
                f'{r["step_s"]:.3f} s / step, {r["sample_s_per_image"]:.2f} s / image (stage 1 not included)'
            })
    return rows


def _fmt_hours(h):
    return f'{h:.2f} h' if h < 48 else f'{h / 24:.1f} days'


def markdown(summary):
    dev, fig = summary['device'], summary['figures']
    lines = [
        f'# GPU check ({summary["mode"]})', '',
        f'Date {dev.get("date", "?")}, commit {dev.get("commit", "?")}, device {dev.get("device", "?")}, torch '
        f'{dev.get("torch", "?")} (CUDA {dev.get("cuda")}), Python {dev.get("python", "?")}.', ''
    ]
    if summary['mode'] == 'cpu-smoke':
        lines += [
            'CPU smoke run: tiny networks and sizes; the figures check the code paths and time nothing of '
            'interest.', ''
        ]
    lines += ['| step | status | seconds |', '|---|---|---|']
    for name, st in summary['steps'].items():
        lines.append(f'| {name} | {"ok" if st["rc"] == 0 else "FAILED (exit " + str(st["rc"]) + ")"} | '
                     f'{st.get("seconds", "")} |')
    lines.append('')
    if fig.get('idc'):
        lines += [
            f'## IDC batched step ({fig["idc"]["teacher"]}, random weights)', '',
            '| K | amp | patches | ms / step | instance-iterations / s | teacher share | teacher TFLOP/s | '
            'peak memory (MiB) |', '|---|---|---|---|---|---|---|---|'
        ]
        for r in fig['idc']['rows']:
            if r.get('oom'):
                lines.append(f'| {r["k"]} | {r["amp"]} | out of memory | | | | | |')
                continue
            tflops = '-' if r.get('teacher_tflops') is None else f'{r["teacher_tflops"]:.2f}'
            lines.append(f'| {r["k"]} | {r["amp"]} | {r["patches"]} | {r["step_ms"]:.1f} | {r["inst_iters_per_s"]:.2f} '
                         f'| {r["teacher_share"]:.0%} | {tflops} | {r["peak_mib"]:.0f} |')
        lines.append('')
    if fig.get('gsdd'):
        g = fig['gsdd']
        lines += [
            f'## GSDD steps ({g["generator"]}, random weights, chunked)', '',
            '| IPC | chunk | amp | s / step | peak memory (MiB) |', '|---|---|---|---|---|'
        ]
        lines += [
            f'| {r["ipc"]} | {r["chunk"]} | {r["amp"]} | {r["step_s"]:.3f} | {r["peak_mib"]:.0f} |' for r in g['rows']
        ]
        lines += [
            '', f'Peak growth over IPC (amp off): {g["peak_growth_mib"]:.0f} MiB; memory flat: '
            f'{g["memory_flat"] if g["memory_flat"] is not None else "not judged on the CPU"}.', ''
        ]
    if fig.get('minimax'):
        m = fig['minimax']
        lines += [
            f'## Minimax-SR ({m["dit"]}, {m["vae"]})', '',
            '| amp | stage-2 step (s, batch) | latents | step peak (MiB) | DDIM steps | s / image | sampling '
            'peak (MiB) |', '|---|---|---|---|---|---|---|'
        ]
        lines += [
            f'| {r["amp"]} | {r["step_s"]:.3f} ({r["batch"]}) | {"x".join(map(str, r["latents"] or []))} | '
            f'{r["step_peak_mib"]:.0f} | {r["sample_steps"]} | {r["sample_s_per_image"]:.2f} | '
            f'{r["sample_peak_mib"]:.0f} |' for r in m['rows'] if not r.get('oom')
        ]
        lines += [f'| {r["amp"]} | out of memory | | | | | |' for r in m['rows'] if r.get('oom')]
        lines.append('')
    if fig.get('imdn'):
        i = fig['imdn']
        lines += [
            f'## Real checkpoint: {i["checkpoint"]} on Set5', '',
            f'Y-PSNR on the CPU {i["psnr_cpu"]:.4f} dB, on {i["device"]} {i["psnr_device"]:.4f} dB '
            f'(difference {i["difference_db"]:.4f} dB, at most 0.01 allowed).', ''
        ]
    if fig.get('tests'):
        lines += [f'## cuda-marked tests: {fig["tests"]}', '']
    if fig.get('wheels'):
        w = fig['wheels']
        lines += [
            '## Wheels', '',
            w.get('gpu_wheels') or f'{len(w.get("wheels", []))} wheels installed into an empty '
            f'folder and imported; left to the machine: {", ".join(w.get("left_to_the_machine", []))}.', ''
        ]
    proj = summary['projection']
    if proj:
        lines += [
            '## Paper-scale wall time from these step times', '',
            f'Measured on {dev.get("device", "?")}; 8 GPUs: torchrun with 8 processes, IDC splitting the '
            'images, GSDD the classes (one each, 7 busy), Minimax-SR the stage-2 batch (communication not '
            'counted) and the sampled classes.', '',
            '| option file | run | 1 device | 8 devices | peak memory (GiB) | from |', '|---|---|---|---|---|---|'
        ]
        lines += [
            f'| {r["run"]} | {r["setting"]} | {_fmt_hours(r["hours_1"])} | {_fmt_hours(r["hours_8"])} | '
            f'{r["peak_mib"] / 1024:.1f} | {r["basis"]} |' for r in proj
        ]
        lines.append('')
    return '\n'.join(lines)


def step_report(args):
    statuses = dict(s.split('=', 1) for s in args.status)
    steps, figures = {}, {}
    for name, rc in statuses.items():
        path = osp.join(args.out, f'step_{name}.json')
        data = None
        if osp.isfile(path):
            with open(path) as f:
                data = json.load(f)
        steps[name] = {
            'rc': int(rc),
            'seconds': data.get('seconds') if data else None,
            'error': data.get('error') if data else 'no result written (killed or timed out?)'
        }
        if data and data.get('figures') is not None and int(rc) == 0:
            figures[name] = data['figures']
    device = figures.get('device', {})
    summary = {
        'mode': 'cpu-smoke' if args.cpu_smoke else 'gpu',
        'ok': all(s['rc'] == 0 for s in steps.values()),
        'device': device,
        'steps': steps,
        'figures': figures,
        'projection': projection(figures),
    }
    write_json(osp.join(args.out, 'gpu_check.json'), summary)
    write_text(osp.join(args.out, 'gpu_check.md'), markdown(summary))
    bar = '=' * 100
    print(bar)
    print(f'GPU check ({summary["mode"]}): {device.get("device", "?")}, torch {device.get("torch", "?")}, commit '
          f'{device.get("commit", "?")}, {device.get("date", "?")}')
    for name, st in steps.items():
        state = 'ok  ' if st['rc'] == 0 else f'FAIL (exit {st["rc"]})'
        err = '' if st['rc'] == 0 else f'  {(st["error"] or "").strip().splitlines()[-1][:70] if st["error"] else ""}'
        print(f'  {name:8s} {state:14s} {st["seconds"] if st["seconds"] is not None else "-":>8} s{err}')
    idc = figures.get('idc', {}).get('rows', [])
    if idc:
        print('  IDC    K/amp -> inst-it/s, MiB: ' +
              ', '.join(f'{r["k"]}/{r["amp"]} OOM' if r.
                        get('oom') else f'{r["k"]}/{r["amp"]} {r["inst_iters_per_s"]:.1f} {r["peak_mib"]:.0f}'
                        for r in idc))
    for r in figures.get('gsdd', {}).get('rows', []):
        print(f'  GSDD   IPC {r["ipc"]:3d} chunk {r["chunk"]} amp {r["amp"]:4s}: {r["step_s"]:.3f} s/step, '
              f'{r["peak_mib"]:.0f} MiB')
    for r in (r for r in figures.get('minimax', {}).get('rows', []) if not r.get('oom')):
        print(f'  Minimax amp {r["amp"]:4s}: step {r["step_s"]:.3f} s (batch {r["batch"]}), {r["step_peak_mib"]:.0f} '
              f'MiB; {r["sample_steps"]} DDIM steps {r["sample_s_per_image"]:.2f} s/image')
    if figures.get('imdn'):
        i = figures['imdn']
        print(f'  IMDN Set5: CPU {i["psnr_cpu"]:.4f} dB, {i["device"]} {i["psnr_device"]:.4f} dB')
    for r in summary['projection']:
        print(f'  paper {r["run"]:16s} 1 device {_fmt_hours(r["hours_1"]):>10s}, 8: {_fmt_hours(r["hours_8"]):>10s}, '
              f'{r["peak_mib"] / 1024:.1f} GiB')
    print(f'  figures: {osp.join(args.out, "gpu_check.json")}, {osp.join(args.out, "gpu_check.md")}')
    print(f'GPU check {"PASSED" if summary["ok"] else "FAILED"}')
    print(bar)
    if not summary['ok']:
        raise SystemExit(1)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('step', choices=STEPS)
    parser.add_argument('--out', required=True, help='folder of the step JSON files and the report')
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny sizes on the CPU (the test suite)')
    parser.add_argument('--wheel-dir', default='.whl')
    parser.add_argument('--site', default=None, help='wheels: the empty folder to install them to')
    parser.add_argument('--status', nargs='*', default=[], help='report: NAME=EXIT_STATUS of each step')
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.chdir(REPO)
    if args.step == 'report':
        step_report(args)
        return
    start = time.perf_counter()
    path = osp.join(args.out, f'step_{args.step}.json')
    try:
        if os.environ.get('GPU_CHECK_BREAK') == args.step:
            raise RuntimeError(f'step {args.step} broken on purpose (GPU_CHECK_BREAK={args.step})')
        figures = globals()[f'step_{args.step}'](args)
    except BaseException as err:
        import traceback
        write_json(
            path, {
                'step': args.step,
                'ok': False,
                'seconds': round(time.perf_counter() - start, 1),
                'error': f'{type(err).__name__}: {err}',
                'traceback': traceback.format_exc()
            })
        raise
    write_json(path, {
        'step': args.step,
        'ok': True,
        'seconds': round(time.perf_counter() - start, 1),
        'figures': figures
    })


if __name__ == '__main__':
    main()
