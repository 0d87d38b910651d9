"""pamc: partially annotated multi-label classification with BoostLU and large-loss methods."""
from . import labels, losses, metrics
from .boostlu import BoostLU, boostlu
from .config import TrainConfig
from .engine import RunResult, train
from .models import CamClassifier

__version__ = "0.1.0"
__all__ = ["BoostLU", "boostlu", "CamClassifier", "TrainConfig", "train", "RunResult", "labels", "losses", "metrics"]
