"""A number to track for generated digits: what a digits classifier makes of them.

The classifier is the CNN example's Net (one input channel), trained centrally on the digits
training split when first needed (a few seconds on CPU) and kept for the process.

- `confident`: the fraction of samples the classifier puts in one class with p > 0.9;
  noise and blobs score near 0, clean digits near 1.
- `inception_score`: exp(E_x KL(p(y|x) ‖ p(y))) over the classifier's 10 classes, from 1
  (every sample the same, or unrecognisable) to 10 (confident and evenly spread over all ten
  digits): it drops when the generator collapses onto a few digits.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from examples.cnn.task import Net
from examples.datasets import load_digits_dataset, to_torch_loader

CONFIDENCE = 0.9


@functools.lru_cache(maxsize=2)
def digits_classifier(image_size: int = 32, seed: int = 0, epochs: int = 8) -> Net:
    """Net trained on the digits training split (grey, image_size², in [-1, 1])."""
    ds = load_digits_dataset(image_size=image_size, channels=1, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Net(in_channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    with torch.enable_grad():  # callers may be inside no_grad
        for epoch in range(epochs):
            batches = to_torch_loader(ds.x_train, ds.y_train, 64, shuffle=True, seed=seed + epoch)
            for x, y in batches:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
    model.eval()
    return model


def classifier_accuracy(model: Net, image_size: int = 32, seed: int = 0) -> float:
    """The classifier's accuracy on the digits test split (how far to trust its scores)."""
    ds = load_digits_dataset(image_size=image_size, channels=1, seed=seed)
    with torch.no_grad():
        predicted = model(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    return float(np.mean(predicted == ds.y_test))


def digit_scores(images: torch.Tensor, model: Net) -> dict[str, float]:
    """`confident` and `inception_score` of generated images (N×1×H×W in [-1, 1])."""
    with torch.no_grad():
        p = F.softmax(model(images), dim=1).double()
    marginal = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p + 1e-12) - torch.log(marginal + 1e-12))).sum(1)
    return {
        "confident": float((p.max(1).values > CONFIDENCE).double().mean()),
        "inception_score": float(torch.exp(kl.mean())),
    }
