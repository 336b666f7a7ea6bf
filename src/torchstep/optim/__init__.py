"""The ``torch.optim``-shaped namespace: ``import torchstep.optim as optim`` replaces ``torch.optim``."""

from .. import backends  # noqa: F401 -- installs the backends' group runner into core (torchstep.core.runner)
from ..algorithms.adabelief import AdaBelief
from ..algorithms.adadelta import Adadelta
from ..algorithms.adafactor import Adafactor
from ..algorithms.adagrad import Adagrad
from ..algorithms.adam import Adam
from ..algorithms.adamax import Adamax
from ..algorithms.adamw import AdamW
from ..algorithms.adan import Adan
from ..algorithms.ademamix import AdEMAMix
from ..algorithms.adopt import ADOPT
from ..algorithms.asgd import ASGD
from ..algorithms.lamb import Lamb
from ..algorithms.lars import LARS
from ..algorithms.lbfgs import LBFGS
from ..algorithms.lion import Lion
from ..algorithms.lookahead import Lookahead
from ..algorithms.muon import Muon
from ..algorithms.nadam import NAdam
from ..algorithms.prodigy import Prodigy
from ..algorithms.radam import RAdam
from ..algorithms.rmsprop import RMSprop
from ..algorithms.rprop import Rprop
from ..algorithms.schedule_free import AdamWScheduleFree, SGDScheduleFree
from ..algorithms.sgd import SGD
from ..algorithms.sparse_adam import SparseAdam
from ..core.optimizer import Optimizer
from . import lr_scheduler
from . import swa_utils

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop", "LBFGS", "Adafactor", "Muon", "Lamb", "LARS", "SGDScheduleFree", "AdamWScheduleFree", "Prodigy", "Lookahead", "Lion", "Adan", "AdaBelief", "ADOPT", "AdEMAMix", "lr_scheduler", "swa_utils"]
