"""Times the Python reference accountants and our CLI on the same plans, in one process run.

Plan: q = 0.01, sigma = 1, delta = 1e-5; epsilon at 100,000 steps; calibration of sigma for
epsilon = 8 at 10,000 steps. Our times are whole CLI processes (start-up included), so the
ratios understate our speed slightly. Usage: python benches/accounting_speed.py PATH_TO_CLI
"""
import json
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import logging

logging.disable(logging.WARNING)

CLI = sys.argv[1]
Q, SIGMA, DELTA, T, T_CAL, TARGET = 0.01, 1.0, 1e-5, 100_000, 10_000, 8.0


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def ours(*args):
    out = subprocess.run([CLI, *args, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def dpa_rdp():
    import dp_accounting as dpa
    from dp_accounting.rdp import rdp_privacy_accountant as rdp
    ev = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(SIGMA)), T)
    return rdp.RdpAccountant().compose(ev).get_epsilon(DELTA)


def dpa_pld():
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant as pld
    ev = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(SIGMA)), T)
    return pld.PLDAccountant(value_discretization_interval=1e-4).compose(ev).get_epsilon(DELTA)


def prv():
    from prv_accountant import PRVAccountant
    from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism
    acc = PRVAccountant(prvs=[PoissonSubsampledGaussianMechanism(Q, SIGMA)], max_self_compositions=[T],
                        eps_error=0.01, delta_error=DELTA / 1000)
    return acc.compute_epsilon(DELTA, [T])[2]


def opacus_sigma(kind):
    from opacus.accountants.utils import get_noise_multiplier
    return get_noise_multiplier(target_epsilon=TARGET, target_delta=DELTA, sample_rate=Q, steps=T_CAL,
                                accountant=kind)


common = ["--sampling-rate", str(Q), "--delta", str(DELTA)]
rows = [
    ("RDP epsilon, 1e5 steps", timed(dpa_rdp, 5), "dp_accounting RDP",
     timed(lambda: ours("epsilon", *common, "--noise-multiplier", "1", "--steps", str(T), "--accountant", "rdp")["epsilon"], 5)),
    ("PLD/PRV epsilon, 1e5 steps", timed(dpa_pld, 3), "dp_accounting PLD 1e-4",
     timed(lambda: ours("epsilon", *common, "--noise-multiplier", "1", "--steps", str(T))["epsilon"], 3)),
    ("PRV epsilon (error 0.01), 1e5 steps", timed(prv, 1), "prv_accountant",
     timed(lambda: ours("epsilon", *common, "--noise-multiplier", "1", "--steps", str(T))["epsilon"], 3)),
    ("sigma for epsilon 8, 1e4 steps (RDP)", timed(lambda: opacus_sigma("rdp"), 3), "Opacus rdp",
     timed(lambda: ours("sigma", *common, "--epsilon", "8", "--steps", str(T_CAL), "--accountant", "rdp")["noise_multiplier"], 5)),
    ("sigma for epsilon 8, 1e4 steps (PRV)", timed(lambda: opacus_sigma("prv"), 1), "Opacus prv",
     timed(lambda: ours("sigma", *common, "--epsilon", "8", "--steps", str(T_CAL))["noise_multiplier"], 3)),
]
print(f"{'task':40} {'reference':24} {'ref s':>9} {'ref value':>10} {'ours s':>9} {'our value':>10} {'speed-up':>9}")
for task, (ref_s, ref_v), ref_name, (our_s, our_v) in rows:
    print(f"{task:40} {ref_name:24} {ref_s:9.4f} {ref_v:10.5f} {our_s:9.4f} {our_v:10.5f} {ref_s / our_s:8.1f}x")
