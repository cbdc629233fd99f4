"""The package's layers (docs/DesignConvention.md): every import of a ``basicsr_distill`` module, at module level or
inside a function, points to the same or a lower layer."""
import ast
import os
import os.path as osp
import pytest
from conftest import REPO

PACKAGE = osp.join(REPO, 'basicsr_distill')

#: Layer of each top-level part of the package, from the ground up (the table of docs/DesignConvention.md).
LAYERS = {
    'version': 0,
    'utils': 0,
    'ops': 0,
    'archs': 0,
    'compat': 1,
    'losses': 1,
    'distilled_set': 1,
    'data': 2,
    'models': 3,
    'selection': 4,
    'benchmark': 5,
    'train': 6,
    'test': 6,
    '__init__': 6,
}


def part_of(module):
    """``'basicsr_distill.data.sr_patches'`` -> ``'data'``; the package itself -> ``'__init__'``."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def imported_modules(source, module):
    """The ``basicsr_distill`` modules that ``source`` (the text of ``module``) imports, with their line numbers."""
    found = []
    package = module if module.endswith('__init__') else module.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith('basicsr_distill')]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ''
            if node.level:  # relative: resolve against the importing package
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                name = '.'.join(base + ([name] if name else []))
            if name == 'basicsr_distill':  # from basicsr_distill import compat, data, ...
                found += [(f'basicsr_distill.{alias.name}', node.lineno) for alias in node.names]
            elif name.startswith('basicsr_distill'):
                found.append((name, node.lineno))
    return found


def upward_imports(source, module):
    """``[(line, importing part, imported part)]`` of the imports in ``source`` that point to a higher layer."""
    own = LAYERS[part_of(module)]
    return [(line, part_of(module), part_of(name)) for name, line in imported_modules(source, module)
            if LAYERS.get(part_of(name), -1) > own]


def package_modules():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith('.py'):
                rel = osp.relpath(osp.join(root, name), REPO)[:-3]
                yield osp.join(REPO, rel + '.py'), rel.replace(os.sep, '.')


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module) for _, module in package_modules()}
    assert parts == set(LAYERS), f'parts without a layer: {parts - set(LAYERS)}; stale: {set(LAYERS) - parts}'


def test_every_import_points_to_the_same_or_a_lower_layer():
    problems = []
    for path, module in package_modules():
        with open(path, encoding='utf-8') as f:
            problems += [
                f'{osp.relpath(path, REPO)}:{line}: {src} (layer {LAYERS[src]}) imports {dst} (layer '
                f'{LAYERS[dst]})' for line, src, dst in upward_imports(f.read(), module)
            ]
    assert not problems, 'imports that run back up:\n' + '\n'.join(problems)


@pytest.mark.parametrize('source, expected', [
    ('from basicsr_distill.models.idc_model import IDCModel\n', [(1, 'utils', 'models')]),
    ('def f():\n    from basicsr_distill.data import image_io\n', [(2, 'utils', 'data')]),
    ('import basicsr_distill.benchmark.runner\n', [(1, 'utils', 'benchmark')]),
    ('from basicsr_distill import selection\n', [(1, 'utils', 'selection')]),
    ('from ..models import distill_base_model\n', [(1, 'utils', 'models')]),
    ('from basicsr_distill.utils.file_io import tmp_path\nfrom basicsr_distill.ops import lowpass\n', []),
])
def test_the_check_finds_an_upward_import_wherever_it_is_written(source, expected):
    assert upward_imports(source, 'basicsr_distill.utils.some_module') == expected
