"""The ``torch.optim``-shaped namespace: ``import torchstep.optim as optim`` replaces ``torch.optim``."""

from ..algorithms.adadelta import Adadelta
from ..algorithms.adafactor import Adafactor
from ..algorithms.adagrad import Adagrad
from ..algorithms.adam import Adam
from ..algorithms.adamw import AdamW
from ..algorithms.lbfgs import LBFGS
from ..algorithms.muon import Muon
from ..algorithms.rmsprop import RMSprop
from ..algorithms.sgd import SGD
from ..algorithms.sparse_adam import SparseAdam
from ..core.optimizer import Optimizer
from . import lr_scheduler
from . import swa_utils

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "SparseAdam", "LBFGS", "Adafactor", "Muon", "swa_utils"]
