"""Reference architectures (a registry by name), training with a cached checkpoint, predictions."""

from roiroa.models import lenet, mnist_cnn, mobilenet, resnet  # noqa: F401  (register "mnist-cnn", "resnet20"...)
from roiroa.models.lenet import LeNet5
from roiroa.models.loading import check_model_fits, load_model, load_weights, read_state_dict
from roiroa.models.mnist_cnn import MnistCNN
from roiroa.models.normalize import NORMALIZATIONS, Normalized, normalization_values
from roiroa.models.predict import accuracy, predict, predict_logits
from roiroa.models.registry import MODELS, create_model, list_models, register_model
from roiroa.models.resnet import CifarResNet, resnet20, resnet32, resnet44, resnet56
from roiroa.models.train import TrainedModel, TrainingRecipe, load_or_train, random_shift, train_classifier

__all__ = [
    "MODELS",
    "MnistCNN",
    "LeNet5",
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "create_model",
    "list_models",
    "register_model",
    "predict",
    "predict_logits",
    "accuracy",
    "TrainingRecipe",
    "TrainedModel",
    "train_classifier",
    "load_or_train",
    "random_shift",
    "load_model",
    "load_weights",
    "read_state_dict",
    "check_model_fits",
    "Normalized",
    "NORMALIZATIONS",
    "normalization_values",
]
