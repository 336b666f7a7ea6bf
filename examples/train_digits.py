"""The demo: train the same model on scikit-learn's digits with torch.optim and torchstep.optim.

The only difference between the two runs is the module the optimizer class comes from, so the
losses agree to float rounding. Run with `make demo`.
"""

import time

import torch

import torchstep.optim
from torchstep.tasks import DROP_IN_SETUPS, digits_model, load_digits, train

SETUPS = DROP_IN_SETUPS


def main() -> None:
    data = load_digits()
    train(digits_model(), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), data, epochs=1)  # warm-up
    print(f"digits: {len(data.x_train)} train / {len(data.x_val)} validation images, 20 epochs\n")
    print(f"{'optimizer':<10} {'library':<16} {'final loss':>11} {'val acc':>8} {'time s':>7}")
    for name, kwargs in SETUPS.items():
        for lib in (torch.optim, torchstep.optim):
            start = time.perf_counter()
            result = train(digits_model(), lambda m: getattr(lib, name)(m.parameters(), **kwargs), data)
            elapsed = time.perf_counter() - start
            print(f"{name:<10} {lib.__name__:<16} {result.losses[-1]:>11.6f} {result.val_accuracy:>8.3f} {elapsed:>7.2f}")


if __name__ == "__main__":
    main()
