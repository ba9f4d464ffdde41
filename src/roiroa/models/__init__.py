"""Reference architectures (a registry by name), training with a cached checkpoint, predictions."""

from roiroa.models import mnist_cnn  # noqa: F401  (registers "mnist-cnn")
from roiroa.models.mnist_cnn import MnistCNN
from roiroa.models.predict import accuracy, predict, predict_logits
from roiroa.models.registry import MODELS, create_model, list_models, register_model
from roiroa.models.train import TrainedModel, TrainingRecipe, load_or_train, random_shift, train_classifier

__all__ = [
    "MODELS",
    "MnistCNN",
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
]
