"""Reference ε figures for fedchain's accountant, computed by Google's dp-accounting.

    python -m venv /tmp/dpacc && /tmp/dpacc/bin/pip install dp-accounting==0.6.0
    /tmp/dpacc/bin/python scripts/dp_reference.py > tests/data/dp_reference.json

dp-accounting pins attrs<24, which the project's environment has outgrown, so it runs in an
environment of its own; tests/test_dp.py checks fedchain.privacy.accountant against the file
to 3 significant digits where dp-accounting summed every order's series (`orders_dropped`
0), and no larger where it left orders out.
"""

import json
import logging
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

#: (noise multiplier, sampling rate, steps, delta): DP-SGD's usual regimes, a CNN example's,
#: no sampling (q = 1), tiny and large noise.
CASES = [
    (1.1, 256 / 60_000, 60 * 60_000 // 256, 1e-5),  # Abadi et al.'s MNIST setting, 60 epochs
    (4.0, 0.01, 10_000, 1e-5),
    (1.0, 0.01, 1_000, 1e-5),
    (0.8, 0.05, 500, 1e-6),
    (2.0, 0.1, 200, 1e-5),
    (1.0, 64 / 383, 60, 1e-5),
    (0.6, 0.2, 100, 1e-5),
    (5.0, 0.5, 40, 1e-5),
    (1.5, 1.0, 10, 1e-5),
    (0.5, 0.001, 100_000, 1e-5),
    (10.0, 0.3, 300, 1e-7),
    (1.2, 0.02, 1, 1e-5),
]


class _Dropped(logging.Handler):
    """Counts dp-accounting's warnings that an order's series did not converge (that order
    is then left out, and its epsilon can only be larger than the exact one)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to converge" in record.getMessage():
            self.count += 1


def main() -> None:
    out = []
    dropped = _Dropped()
    logging.getLogger().addHandler(dropped)
    for sigma, q, steps, delta in CASES:
        dropped.count = 0
        accountant = rdp.RdpAccountant()  # dp-accounting's default orders
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
        out.append({"noise_multiplier": sigma, "q": q, "steps": steps, "delta": delta,
                    "epsilon": accountant.get_epsilon(delta),
                    "orders_dropped": dropped.count})
    json.dump({"source": "dp-accounting 0.6.0, RdpAccountant (default orders)",
               "cases": out}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
