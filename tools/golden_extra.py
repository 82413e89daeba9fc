"""Reference values from dp_accounting 0.6.0 for cases the shared golden file does not cover:
fixed-size sampling without replacement (replace-one), delta for a given epsilon, and
composed/heterogeneous events. Run: python tools/golden_extra.py > dp-accounting/tests/golden/dp_accounting_extra.json
(needs `pip install dp-accounting==0.6.0`)."""
import json

import dp_accounting
from dp_accounting import dp_event as ev
from dp_accounting.rdp import rdp_privacy_accountant as rdp

REL = dp_accounting.NeighboringRelation


def wor(n, m, sigma, steps):
    return ev.SelfComposedDpEvent(
        ev.SampledWithoutReplacementDpEvent(n, m, ev.GaussianDpEvent(sigma)), steps)


def dpsgd(q, sigma, steps):
    return ev.SelfComposedDpEvent(ev.PoissonSampledDpEvent(q, ev.GaussianDpEvent(sigma)), steps)


out = {"library": "dp_accounting " + dp_accounting.__version__ if hasattr(dp_accounting, "__version__") else "dp_accounting 0.6.0",
       "orders": list(rdp.DEFAULT_RDP_ORDERS), "without_replacement": [], "delta": [], "composed": []}
for n, m, sigma, steps, delta in [(60000, 256, 1.0, 1000, 1e-5), (1000, 100, 2.0, 100, 1e-6),
                                  (50000, 500, 0.8, 5000, 1e-5), (100, 50, 4.0, 10, 1e-5)]:
    acc = rdp.RdpAccountant(neighboring_relation=REL.REPLACE_ONE).compose(wor(n, m, sigma, steps))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    per_step = rdp._compute_rdp_sample_wor_gaussian(m / n, sigma, rdp.np.array(rdp.DEFAULT_RDP_ORDERS))
    out["without_replacement"].append(dict(n=n, m=m, sigma=sigma, steps=steps, delta=delta, eps=eps,
                                           order=order, rdp_per_step=[float(x) for x in per_step]))
for q, sigma, steps, eps in [(0.01, 1.0, 10000, 6.0), (0.001, 2.0, 1000, 0.5), (0.1, 0.8, 100, 3.0),
                             (1.0, 4.0, 10, 0.01)]:
    acc = rdp.RdpAccountant().compose(dpsgd(q, sigma, steps))
    d, order = acc.get_delta_and_optimal_order(eps)
    out["delta"].append(dict(q=q, sigma=sigma, steps=steps, eps=eps, delta=d, order=order))
composed = ev.ComposedDpEvent([dpsgd(0.01, 1.0, 500), dpsgd(0.02, 1.5, 300),
                               ev.GaussianDpEvent(10.0), ev.NoOpDpEvent()])
acc = rdp.RdpAccountant().compose(composed)
eps, order = acc.get_epsilon_and_optimal_order(1e-5)
out["composed"].append(dict(events=[[0.01, 1.0, 500], [0.02, 1.5, 300]], gaussian=10.0, delta=1e-5,
                            eps=eps, order=order))
print(json.dumps(out, indent=1))
