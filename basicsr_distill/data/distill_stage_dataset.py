"""A dataset that only drives BasicSR's train loop for models whose units of work are stages (Minimax-SR)."""
from torch.utils import data as data

from basicsr.utils.registry import DATASET_REGISTRY
from basicsr_distill.utils.options import check_dataset_keys


@DATASET_REGISTRY.register()
class DistillStageDataset(data.Dataset):
    """Items are ticks ``{'tick': index}``: the model loads its own data for each stage (e.g. the stage-1 patch
    selection of ``MinimaxDiffusionModel``).

    Options:
        length (int): items per epoch (any positive number; it only sets BasicSR's epoch length). Default: 1000.
        dataroot_gt, meta_info_file, gt_size, stride: The data of the model's stages, read by the model (Minimax-SR:
            the HR images of stage 1, their meta-info filter and the HR patch size and stride); not used here.

    Raises:
        ValueError: ``length`` < 1, or a key other than these and BasicSR's own (named, ``datasets.<phase>.<key>``).
    """

    #: The keys of this dataset's section (besides BasicSR's own, ``utils.options.BASICSR_DATASET_KEYS``).
    OPTION_KEYS = ('length', 'dataroot_gt', 'meta_info_file', 'gt_size', 'stride')

    def __init__(self, opt):
        super().__init__()
        check_dataset_keys(opt, self.OPTION_KEYS, type(self).__name__)
        self.length = int(opt.get('length', 1000))
        if self.length < 1:
            raise ValueError(f'datasets.train.length must be >= 1, got {self.length}')

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return {'tick': index}
