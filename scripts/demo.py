"""The README's main job: distil the bundled real images with IDC into one LR patch per image, train a small EDSR on
the result, on the full pool of real patches (the upper reference), on a random subset of real patches of the same
size, on the same random real LR patches with the teacher's HR (the control that separates what IDC adds from
relabelling by its teacher) and on IDC's own starting patches with the teacher's HR (``idc_init``: what IDC's
optimisation of the LR adds), and report Set5 PSNR / SSIM (Y channel, 4-pixel border) with full minus random, the
figure that says whether the student is data-bound.

Every step runs the public command line (``basicsr_distill/train.py -opt ...``, ``scripts/select_subset.py``);
the full logs go to ``results/demo/logs/``, the table to ``results/demo/table.md``. Run from anywhere::

    python scripts/demo.py [--edsr_iters 2000] [--seed 0] [--fresh]

Finished distillation instances are never recomputed: a second run reuses ``datasets/distilled/idc_demo_n1`` unless
``--fresh`` moves it aside first.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
DISTILL_OPT = 'options/distill/idc_demo_n1.yml'
EDSR_OPT = 'options/train/EDSR/train_EDSR_x4_distilled_demo.yml'
IDC_ROOT = 'datasets/distilled/idc_demo_n1'
FULL_ROOT = 'datasets/distilled/full_demo'
RANDOM_ROOT = 'datasets/distilled/random_demo'
TEACHER_HR_ROOT = 'datasets/distilled/random_teacher_hr_demo'
IDC_INIT_ROOT = 'datasets/distilled/idc_init_demo'
SET5_HR, SET5_LR = 'datasets/demo/Set5/HR', 'datasets/demo/Set5/LR_bicubic/X4'
SHOW = ('IDC instance', '] unit ', ', iter:', '# psnr', '# ssim', 'Error', 'error:', 'Traceback', 'End of training')


def run(title, cmd, log_name):
    """Run ``cmd`` in the repository, keep its full log, echo the progress lines; return seconds."""
    log_path = osp.join(REPO, 'results', 'demo', 'logs', log_name)
    os.makedirs(osp.dirname(log_path), exist_ok=True)
    print(f'\n== {title}\n$ {" ".join(cmd)}', flush=True)
    start = time.time()
    popen = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log_path, 'w') as log, subprocess.Popen([sys.executable] + cmd, **popen) as proc:
        for line in proc.stdout:
            log.write(line)
            if any(key in line for key in SHOW):
                print('   ' + line.rstrip().split(' INFO: ')[-1], flush=True)
    if proc.returncode:
        sys.exit(f'step failed ({title}); full log: {log_path}')
    return time.time() - start


def evaluate(label, net, seconds, pairs):
    from basicsr_distill.utils.sr_eval import evaluate_sr
    res = evaluate_sr(net, osp.join(REPO, SET5_HR), osp.join(REPO, SET5_LR), scale=4)
    return {
        'training set': label,
        'pairs': pairs,
        'Set5 PSNR (dB)': res['psnr'],
        'Set5 SSIM': res['ssim'],
        'wall time (s)': seconds
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--edsr_iters', type=int, default=2000, help='EDSR training iterations per run')
    parser.add_argument('--seed', type=int, default=0, help='EDSR seed (manual_seed) of every run')
    parser.add_argument('--fresh', action='store_true', help='move an earlier distilled set aside and recompute')
    args = parser.parse_args()
    os.chdir(REPO)
    if args.fresh and osp.isdir(IDC_ROOT):
        os.replace(IDC_ROOT, f'{IDC_ROOT}_old_{time.strftime("%Y%m%d_%H%M%S")}')

    t_distill = run('1/8 IDC distillation of 24 real images into one LR patch each (IMDN teacher, CPU)',
                    ['basicsr_distill/train.py', '-opt', DISTILL_OPT], 'distill_idc.log')
    manifest = json.load(open(osp.join(IDC_ROOT, 'distill.json')))
    num_pairs = manifest['num_pairs']
    t_select = 0.0
    like = ['--like', IDC_ROOT]  # the pair count of the distilled set
    controls = [  # (tag, output folder, what it is, select_subset.py rule and size)
        ('full', FULL_ROOT, 'the full pool: every real patch of the 24 images, real HR',
         ['--method', 'random', '--ratio', '1.0'])
    ]
    controls.append(('random', RANDOM_ROOT, f'random subset of {num_pairs} real LR patches from the same images, real '
                     'HR', ['--method', 'random', *like]))
    controls.append(('random_teacher_hr', TEACHER_HR_ROOT, 'the same random real LR patches, HR = the teacher applied '
                     'to them', ['--method', 'random_teacher_hr', *like]))
    controls.append(('idc_init', IDC_INIT_ROOT, f'IDC\'s {num_pairs} starting LR patches, HR = the teacher applied to '
                     'them', ['--method', 'idc_init', *like]))
    for method, root, what, rule_and_size in controls:
        shutil.rmtree(root, ignore_errors=True)  # derived from the option file and the distilled set: rebuilt every run
        t_select += run(f'2/8 {what}',
                        ['scripts/select_subset.py', '-opt', DISTILL_OPT, *rule_and_size, '--out', root, '--seed', '0'],
                        f'select_{method}.log')
    num_full = json.load(open(osp.join(FULL_ROOT, 'distill.json')))['num_pairs']
    times = {}
    runs = [('idc', IDC_ROOT)] + [(method, root) for method, root, _, _ in controls]
    for step, (tag, root) in enumerate(runs, start=3):
        name = f'EDSR_demo_x4_f32b4_{tag}_s{args.seed}'
        times[tag] = run(f'{step}/8 EDSR x4 (32 features, 4 blocks), {args.edsr_iters} iterations on {root}', [
            'basicsr_distill/train.py', '-opt', EDSR_OPT, '--force_yml', f'name={name}', f'manual_seed={args.seed}',
            f'datasets:train:dataroot={root}', f'train:total_iter={args.edsr_iters}',
            f'train:scheduler:periods=[{args.edsr_iters}]', f'val:val_freq={10 * args.edsr_iters}',
            f'logger:save_checkpoint_freq={args.edsr_iters}'
        ], f'train_{name}.log')

    import basicsr_distill  # noqa: F401
    from basicsr_distill.utils.checkpoint import load_network
    from basicsr_distill.utils.options import read_option_file
    from basicsr_distill.utils.sr_eval import BicubicSR

    # the networks as the option files define them: EDSR as trained, the teacher as the distillation loaded it
    edsr_opt, distill_opt = read_option_file(EDSR_OPT), read_option_file(DISTILL_OPT)
    labels = (('idc', 'IDC distilled (one pair per image)'), ('full', 'the full pool of real patches'),
              ('random', 'random real patches'), ('random_teacher_hr', 'the same random real LR, teacher HR'),
              ('idc_init', 'IDC\'s start, teacher HR'))
    rows = {}
    for tag, label in labels:
        net = load_network(edsr_opt['network_g'],
                           f'experiments/EDSR_demo_x4_f32b4_{tag}_s{args.seed}/models/net_g_latest.pth')
        rows[tag] = evaluate(f'EDSR on {label}', net, times[tag], num_full if tag == 'full' else num_pairs)

    distill_path = distill_opt['path']
    teacher = load_network(
        distill_opt['network_t'],
        distill_path['pretrain_network_t'],
        param_key=distill_path.get('param_key_t', 'auto'),
        strict=distill_path.get('strict_load_t', True))
    ref = [
        evaluate('IDC teacher (IMDN, pretrained)', teacher, None, None),
        evaluate('bicubic', BicubicSR(4), None, None)
    ]

    lines = ['| training set | pairs | Set5 PSNR (dB) | Set5 SSIM | train wall time (s) |', '|---|---|---|---|---|']
    for row in list(rows.values()) + ref:
        seconds = '-' if row['wall time (s)'] is None else round(row['wall time (s)'])
        lines.append(f'| {row["training set"]} | {row["pairs"] or "-"} | {row["Set5 PSNR (dB)"]:.2f} | '
                     f'{row["Set5 SSIM"]:.4f} | {seconds} |')
    table = '\n'.join(lines)
    psnr = {tag: row['Set5 PSNR (dB)'] for tag, row in rows.items()}
    gaps = (
        f'full minus random: {psnr["full"] - psnr["random"]:+.2f} dB (how much the data matters at this size and '
        f'budget); IDC minus random {psnr["idc"] - psnr["random"]:+.2f}, minus teacher HR '
        f'{psnr["idc"] - psnr["random_teacher_hr"]:+.2f}, minus its start {psnr["idc"] - psnr["idc_init"]:+.2f} dB.')
    summary = (f'IDC distillation: {manifest["source"]["num_images"]} images -> {num_pairs} pairs of a {num_full}-pair '
               f'pool in {t_distill:.0f} s (wall time of this run; the set took {manifest["wall_time_s"]:.0f} s to '
               f'distil); the four control sets {t_select:.0f} s; EDSR {args.edsr_iters} iterations per run, seed '
               f'{args.seed}.')
    note = ('How to read it: "full" is what the whole pool gives, "random" the baseline a distilled set must beat; '
            '"teacher HR" keeps the same random real LR and relabels it with the teacher, as IDC makes its HR; '
            '"IDC\'s start" is IDC\'s initial x_hat (informative real patches, init: psnr_bic) through the same '
            'teacher, so IDC minus that row is what its optimisation of the LR adds. One seed: differences under '
            'about 0.05 dB are within seed noise (docs/Benchmark.md gives the seeded figures).')
    os.makedirs('results/demo', exist_ok=True)
    with open('results/demo/table.md', 'w') as f:
        f.write(summary + '\n\n' + table + '\n\n' + gaps + '\n\n' + note + '\n')
    print('\n== 8/8 Set5 x4, Y channel, 4-pixel border (BasicSR metrics)\n' + summary + '\n\n' + table + '\n\n' + gaps +
          '\n\n' + note)
    print(f'\nTable saved to {osp.join(REPO, "results/demo/table.md")}; distilled set in {osp.join(REPO, IDC_ROOT)}')


if __name__ == '__main__':
    main()
