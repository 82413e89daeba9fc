//! Criterion benches of the accountants on the reference plan of the speed comparison
//! (q = 0.01, sigma = 1, delta = 1e-5): RDP and PRV epsilon, and calibration for epsilon = 8 at
//! 10,000 steps. `benches/accounting_speed.sh` times the Python references in the same run.
//! The matrix-factorization benches optimize banded and BLT strategies for 10,000 steps.

use criterion::{criterion_group, criterion_main, Criterion};
use dp_accounting::mf::{optimize_banded, optimize_blt, Objective, Participation, Workload};
use dp_accounting::{calibrate_noise_multiplier, dp_sgd_epsilon, AccountantKind};

const PRV: AccountantKind = AccountantKind::Prv {
    epsilon_error: 0.01,
};

fn epsilon(c: &mut Criterion) {
    c.bench_function("rdp_epsilon_100k_steps", |b| {
        b.iter(|| dp_sgd_epsilon(AccountantKind::Rdp, 0.01, 1.0, 100_000, 1e-5).unwrap())
    });
    let mut slow = c.benchmark_group("prv");
    slow.sample_size(10);
    slow.bench_function("prv_epsilon_10k_steps", |b| {
        b.iter(|| dp_sgd_epsilon(PRV, 0.01, 1.0, 10_000, 1e-5).unwrap())
    });
    slow.bench_function("prv_epsilon_100k_steps", |b| {
        b.iter(|| dp_sgd_epsilon(PRV, 0.01, 1.0, 100_000, 1e-5).unwrap())
    });
    slow.bench_function("prv_calibrate_eps8_10k_steps", |b| {
        b.iter(|| calibrate_noise_multiplier(PRV, 0.01, 10_000, 8.0, 1e-5).unwrap())
    });
    slow.finish();
    c.bench_function("rdp_calibrate_eps8_10k_steps", |b| {
        b.iter(|| calibrate_noise_multiplier(AccountantKind::Rdp, 0.01, 10_000, 8.0, 1e-5).unwrap())
    });
}

fn matrix_factorization(c: &mut Criterion) {
    const N: usize = 10_000;
    let w = Workload::prefix();
    let mut group = c.benchmark_group("mf");
    group.sample_size(10);
    for epochs in [1, 4, 16] {
        let p = Participation::epochs(N, epochs).unwrap();
        let bands = N / epochs as usize;
        group.bench_function(format!("optimize_banded_10k_steps_{epochs}_epochs"), |b| {
            b.iter(|| optimize_banded(N, bands, &w, &p, Objective::Mean).unwrap())
        });
        group.bench_function(format!("optimize_blt4_10k_steps_{epochs}_epochs"), |b| {
            b.iter(|| optimize_blt(N, 4, &w, &p, Objective::Mean).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, epsilon, matrix_factorization);
criterion_main!(benches);
