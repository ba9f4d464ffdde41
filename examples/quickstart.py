import torch.nn as nn

import roiroa
from roiroa.models import TrainingRecipe, train_classifier

digits = roiroa.load_dataset("mnist")  # the 5,000 real MNIST digits bundled with roiroa, (N, 1, 28, 28) in [0, 1]
train, rest = roiroa.split_by_class(digits, test_fraction=0.3, seed=0)
net = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 12 * 12, 10))
train_classifier(net, train, TrainingRecipe(epochs=3), seed=0)  # your own model: load its weights instead
config = {"attacks": [{"name": "pgd-linf", "eps": 0.15, "steps": 10}]}
run = roiroa.Experiment(net, rest, config=config, quick=True).run()  # maps, regions, statistics, masks
print(run.table())
