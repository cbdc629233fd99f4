"""scripts/gpu_check.sh: its CPU mode (``--cpu-smoke``: every step's code path at tiny sizes) passes and writes its
figures as JSON and markdown, and the script exits non-zero, naming the step, when a step fails (a step broken on
purpose, a broken module on PYTHONPATH). Keeps the GPU check from rotting between GPU runs."""
import json
import os
import os.path as osp
import subprocess
from conftest import REPO

STEPS = ['device', 'wheels', 'tests', 'idc', 'gsdd', 'minimax', 'imdn']


def _check(out, *args, env=None, steps=None):
    extra = dict(env or {}, **({'GPU_CHECK_STEPS': ' '.join(steps)} if steps else {}))
    env = {k: v for k, v in os.environ.items() if k not in ('OUT', 'GPU_CHECK_BREAK', 'GPU_CHECK_STEPS')}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', **extra)
    proc = subprocess.run(['bash', 'scripts/gpu_check.sh', '--cpu-smoke', '--out',
                           str(out), *args],
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True)
    report = None
    if osp.isfile(out / 'gpu_check.json'):
        with open(out / 'gpu_check.json') as f:
            report = json.load(f)
    return proc, report


def test_cpu_smoke_passes_and_writes_figures(tmp_path):
    proc, report = _check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert 'GPU check PASSED' in proc.stdout and 'GPU check (cpu-smoke)' in proc.stdout
    assert report['ok'] and report['mode'] == 'cpu-smoke'
    assert list(report['steps']) == STEPS and all(s['rc'] == 0 for s in report['steps'].values())
    fig = report['figures']
    assert fig['device']['mode'] == 'cpu-smoke' and fig['device']['commit'] and fig['device']['date']
    # wheels: the mechanism on this package's own wheel always; the GPU machine's set when .whl/ exists, else SKIP
    own = fig['wheels']['own_wheel']
    assert own['wheel'].startswith('basicsr_distill-') and '/own_site/' in own['imported']['basicsr_distill']
    assert '/own_site/' not in own['imported']['torch']
    if osp.isdir(osp.join(REPO, '.whl')):
        assert 'basicsr' in fig['wheels']['imported'] and 'torch' in fig['wheels']['left_to_the_machine']
    else:
        assert fig['wheels']['gpu_wheels'].startswith('SKIP: .whl/ absent')
    assert fig['tests']['failures'] == fig['tests']['errors'] == 0 and fig['tests']['tests'] > 0
    assert [r['k'] for r in fig['idc']['rows']] == [1, 2] and all(r['inst_iters_per_s'] > 0 for r in fig['idc']['rows'])
    assert [r['ipc'] for r in fig['gsdd']['rows']] == [2, 4] and all(r['step_s'] > 0 for r in fig['gsdd']['rows'])
    mm = fig['minimax']['rows'][0]
    assert mm['step_s'] > 0 and mm['sample_steps'] == 3 and mm['image'] == [3, 64, 64]
    assert fig['imdn']['difference_db'] <= 0.01 and 30 < fig['imdn']['psnr_cpu'] < 40
    assert [r['run'] for r in report['projection']] == ['idc_div2k.yml', 'gsdd_ost.yml', 'minimax_ost.yml']
    assert all(r['hours_8'] < r['hours_1'] for r in report['projection'])
    md = (tmp_path / 'gpu_check.md').read_text()
    for text in ('# GPU check (cpu-smoke)', '| idc | ok |', '| imdn | ok |', '## IDC batched step', '## GSDD steps',
                 '## Minimax-SR', 'Set5', '## Paper-scale wall time from these step times', '| idc_div2k.yml |',
                 '| gsdd_ost.yml |', '| minimax_ost.yml |'):
        assert text in md, text


def test_a_failing_step_fails_the_check(tmp_path):
    proc, report = _check(tmp_path, env={'GPU_CHECK_BREAK': 'idc'}, steps=['device', 'idc'])
    assert proc.returncode != 0
    assert 'GPU check FAILED' in proc.stdout and 'FAILED: device=0 idc=1' in proc.stderr
    assert not report['ok'] and report['steps']['device']['rc'] == 0 and report['steps']['idc']['rc'] == 1
    assert 'broken on purpose' in report['steps']['idc']['error']
    assert '| idc | FAILED (exit 1) |' in (tmp_path / 'gpu_check.md').read_text()


def test_a_broken_module_fails_the_check(tmp_path):
    """A dependency that does not import (as a wheel missing on the GPU machine would) fails its steps loudly."""
    broken = tmp_path / 'broken' / 'diffusers'
    broken.mkdir(parents=True)
    (broken / '__init__.py').write_text('raise ImportError("diffusers broken on purpose")\n')
    out = tmp_path / 'out'
    proc, report = _check(out, env={'PYTHONPATH': str(tmp_path / 'broken')}, steps=['minimax'])
    assert proc.returncode != 0 and 'GPU check FAILED' in proc.stdout
    minimax = report['steps']['minimax']
    assert minimax['rc'] == 1 and 'diffusers broken on purpose' in minimax['error']
