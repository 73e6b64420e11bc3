"""fastretrain: faster and better fine-tuning of image CNNs, one small engine with composable strategies."""
from . import widthnets  # noqa: F401 - registers vgg-small, resnet20, resnet32, resnet18-cifar
from .config import TrainConfig
from .data import DataBundle, from_arrays, from_folder, load_data
from .engine import Engine, SkipBatch, StopFit, Strategy
from .errors import FastRetrainError, FastRetrainWarning, install_warning_format
from .methods import METHODS, check_options, load_all, register_method
from .models import create_model, list_models, register_model
from .predict import Prediction, Predictor, load_model
from .run import build_engine, make_config, train
from .version import __version__  # noqa: F401 - fastretrain.__version__

load_all()  # every built-in method registered, so fastretrain.METHODS lists them all
install_warning_format()  # the package's warnings print as one line, `warning: <message>` (CLI and library)

__all__ = [
    "TrainConfig", "DataBundle", "from_arrays", "from_folder", "load_data", "Engine", "SkipBatch", "StopFit",
    "Strategy", "FastRetrainError", "FastRetrainWarning", "METHODS", "check_options", "load_all", "register_method",
    "create_model", "list_models", "register_model", "build_engine", "make_config", "train", "load_model", "Predictor",
    "Prediction",
]
