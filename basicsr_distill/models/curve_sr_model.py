"""BasicSR's ``SRModel`` that also records every validation in ``<experiments_root>/val_curve.json`` (the benchmark
runner's students, ``model_type: CurveSRModel`` with ``val.val_freq``).
"""
import json
import os.path as osp

from basicsr.models.sr_model import SRModel
from basicsr.models.swinir_model import SwinIRModel
from basicsr.utils.registry import MODEL_REGISTRY
from basicsr_distill.utils.file_io import write_text_atomic

#: file name of the curve, in the experiment folder
CURVE_FILE = 'val_curve.json'


def read_curve(path):
    """The records ``[{'iter', 'dataset', '<metric>': float}]`` of a curve file, by dataset then iteration; ``[]`` if
    absent.

    Raises:
        ValueError: The file is not a curve file (naming it).
    """
    if not osp.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        records = json.load(f)
    if not isinstance(records, list) or not all(isinstance(r, dict) and 'iter' in r for r in records):
        raise ValueError(f'{path} is not a validation curve file (a JSON list of records with "iter"); delete it')
    return sorted(records, key=lambda r: (r['dataset'], r['iter']))


class CurveMixin():
    """Writes each validation to ``<experiments_root>/val_curve.json`` (atomically), one record per (dataset, iteration)
    with BasicSR's metric values; a later validation at the same iteration replaces the record.
    """

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        path = osp.join(self.opt['path']['experiments_root'], CURVE_FILE)
        # BasicSR validates once more after the loop, with current_iter past total_iter (its epoch loop adds one per
        # remaining epoch): those are the weights of the last iteration
        iteration = min(int(current_iter), int(self.opt['train']['total_iter']))
        records = [r for r in read_curve(path) if (r['dataset'], r['iter']) != (dataset_name, iteration)]
        record = {'iter': iteration, 'dataset': dataset_name}
        record.update({metric: float(value) for metric, value in self.metric_results.items()})
        records = sorted(records + [record], key=lambda r: (r['dataset'], r['iter']))
        write_text_atomic(path, json.dumps(records, indent=1) + '\n')


@MODEL_REGISTRY.register()
class CurveSRModel(CurveMixin, SRModel):
    """``SRModel`` whose validations are also written to the curve file (:class:`CurveMixin`)."""


@MODEL_REGISTRY.register()
class CurveSwinIRModel(CurveMixin, SwinIRModel):
    """``SwinIRModel`` (window padding at test time) whose validations are also written to the curve file."""


#: model_type -> its curve-recording counterpart (the benchmark runner's val_freq)
CURVE_MODELS = {'SRModel': 'CurveSRModel', 'SwinIRModel': 'CurveSwinIRModel'}
