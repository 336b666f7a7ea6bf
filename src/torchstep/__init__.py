"""torchstep: torch.optim and its LR schedulers, re-implemented -- drop-in, fused, wider.

``import torchstep.optim as optim`` is the one-line change for an existing training script.
"""

from . import backends  # noqa: F401 -- installs the backends' group runner into core (torchstep.core.runner)
from . import optim
from .comparison import Comparison, compare
from .lr_finder import lr_find
from .params import param_groups
from .tasks import Task

__version__ = "0.1.0"
__all__ = ["optim", "param_groups", "lr_find", "compare", "Comparison", "Task", "__version__"]
