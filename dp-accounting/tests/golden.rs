//! Checks against reference values computed with dp_accounting 0.6.0, Opacus 1.6.0 and
//! 50-digit mpmath integration (`tests/golden/accounting_public.json`, public set).

use dp_accounting::{
    calibrate_noise_multiplier, subsampled_gaussian_rdp, Accountant, AccountantKind, DpEvent,
    RdpAccountant, DEFAULT_ORDERS,
};
use serde_json::Value;

fn golden() -> Value {
    let text = include_str!("golden/accounting_public.json");
    serde_json::from_str(text).expect("golden file parses")
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        other => panic!("not a number: {other}"),
    }
}

fn rel_err(got: f64, want: f64) -> f64 {
    if want == 0.0 {
        got.abs()
    } else {
        (got - want).abs() / want.abs()
    }
}

#[test]
fn rdp_epsilon_matches_the_signed_series_and_never_exceeds_dp_accounting() {
    let g = golden();
    let cases = g["forward"].as_array().unwrap();
    assert_eq!(cases.len(), 42);
    for case in cases {
        let (q, sigma, delta) = (num(&case["q"]), num(&case["sigma"]), num(&case["delta"]));
        let steps = case["steps"].as_u64().unwrap();
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, sigma, steps)).unwrap();
        let got = acc.epsilon_and_order(delta).unwrap();
        let signed = &case["results"]["signed_series_on_dp_accounting_orders"];
        let want = num(&signed["eps"]);
        let id = case["id"].as_str().unwrap();
        assert!(
            rel_err(got.epsilon, want) <= 1e-6,
            "{id}: {} vs signed series {want}",
            got.epsilon
        );
        assert_eq!(got.order, num(&signed["opt_order"]), "{id}: optimal order");
        let dpa = num(&case["results"]["dp_accounting_rdp"]["eps"]);
        assert!(
            got.epsilon <= dpa * (1.0 + 1e-9),
            "{id}: {} above dp_accounting {dpa}",
            got.epsilon
        );
    }
}

#[test]
fn rdp_curves_match_term_by_term() {
    let g = golden();
    for curve in g["rdp_curves"].as_array().unwrap() {
        let (q, sigma) = (num(&curve["q"]), num(&curve["sigma"]));
        let orders: Vec<f64> = curve["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        let exact = curve["rdp_per_step"]["exact_mpmath"].as_array().unwrap();
        for (i, &alpha) in orders.iter().enumerate() {
            let got = subsampled_gaussian_rdp(q, sigma, alpha).unwrap();
            let want = num(&exact[i]);
            // Integer orders are a finite sum; fractional ones a signed series whose double
            // precision is about 5e-7 relative near alpha = 1, where the RDP itself is tiny.
            let ok = if alpha.fract() == 0.0 {
                rel_err(got, want) <= 1e-9
            } else {
                rel_err(got, want) <= 1e-6 || (got - want).abs() <= 1e-10
            };
            assert!(
                ok,
                "q={q} sigma={sigma} alpha={alpha}: {got} vs exact {want}"
            );
        }
    }
}

#[test]
fn calibration_meets_the_target_and_is_at_least_as_tight_as_dp_accounting() {
    let g = golden();
    for case in g["calibration"].as_array().unwrap() {
        let (q, delta, target) = (
            num(&case["q"]),
            num(&case["delta"]),
            num(&case["target_eps"]),
        );
        let steps = case["steps"].as_u64().unwrap();
        let cal = calibrate_noise_multiplier(AccountantKind::Rdp, q, steps, target, delta).unwrap();
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, cal.noise_multiplier, steps))
            .unwrap();
        let achieved = acc.epsilon(delta).unwrap();
        assert!(
            achieved <= target,
            "{}: epsilon {achieved} above target {target}",
            case["id"]
        );
        assert_eq!(achieved, cal.epsilon);
        // dp_accounting calibrates on its looser fractional-order bound, so ours is at most its
        // sigma, and close to it (the gap is the fractional-order difference, under 2%).
        let dpa = num(&case["results"]["dp_accounting_rdp"]["sigma"]);
        let ratio = cal.noise_multiplier / dpa;
        assert!(
            (0.98..=1.0 + 1e-6).contains(&ratio),
            "{}: sigma ratio {ratio}",
            case["id"]
        );
    }
}

#[test]
fn epsilon_is_monotone_and_full_batch_is_the_plain_gaussian() {
    let eps = |q: f64, sigma: f64, steps: u64, delta: f64| {
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, sigma, steps)).unwrap();
        acc.epsilon(delta).unwrap()
    };
    let base = eps(0.01, 1.0, 1000, 1e-5);
    assert!(eps(0.01, 1.0, 2000, 1e-5) > base);
    assert!(eps(0.02, 1.0, 1000, 1e-5) > base);
    assert!(eps(0.01, 0.9, 1000, 1e-5) > base);
    assert!(eps(0.01, 1.0, 1000, 1e-6) > base);
    for &alpha in &DEFAULT_ORDERS {
        let r = subsampled_gaussian_rdp(1.0, 1.5, alpha).unwrap();
        assert!((r - alpha / (2.0 * 1.5 * 1.5)).abs() < 1e-15);
    }
    // Composing step by step equals composing all steps at once.
    let mut a = RdpAccountant::default();
    for _ in 0..10 {
        a.compose(&DpEvent::dp_sgd(0.05, 1.2, 1)).unwrap();
    }
    let mut b = RdpAccountant::default();
    b.compose(&DpEvent::dp_sgd(0.05, 1.2, 10)).unwrap();
    for (x, y) in a.rdp().iter().zip(b.rdp()) {
        assert!(rel_err(*x, *y) < 1e-12);
    }
}

fn extra() -> Value {
    serde_json::from_str(include_str!("golden/dp_accounting_extra.json"))
        .expect("extra golden file parses")
}

#[test]
fn sampling_without_replacement_matches_dp_accounting_under_replace_one() {
    use dp_accounting::{sample_without_replacement_gaussian_rdp, NeighbouringRelation};
    let g = extra();
    let orders: Vec<f64> = g["orders"].as_array().unwrap().iter().map(num).collect();
    for case in g["without_replacement"].as_array().unwrap() {
        let (n, m) = (case["n"].as_u64().unwrap(), case["m"].as_u64().unwrap());
        let (sigma, delta) = (num(&case["sigma"]), num(&case["delta"]));
        let steps = case["steps"].as_u64().unwrap();
        for (alpha, want) in orders.iter().zip(case["rdp_per_step"].as_array().unwrap()) {
            let got = sample_without_replacement_gaussian_rdp(m as f64 / n as f64, sigma, *alpha)
                .unwrap();
            assert!(
                rel_err(got, num(want)) < 1e-9,
                "n={n} m={m} alpha={alpha}: {got} vs {want}"
            );
        }
        let step = DpEvent::SampledWithoutReplacement {
            source_dataset_size: n,
            sample_size: m,
            event: Box::new(DpEvent::Gaussian {
                noise_multiplier: sigma,
            }),
        };
        let mut acc = RdpAccountant::new(DEFAULT_ORDERS.to_vec(), NeighbouringRelation::ReplaceOne);
        acc.compose(&DpEvent::SelfComposed {
            event: Box::new(step),
            count: steps,
        })
        .unwrap();
        let got = acc.epsilon_and_order(delta).unwrap();
        assert!(
            rel_err(got.epsilon, num(&case["eps"])) < 1e-9,
            "n={n} m={m}: {got:?}"
        );
        assert_eq!(got.order, num(&case["order"]));
    }
}

#[test]
fn delta_for_epsilon_is_never_above_dp_accounting() {
    let g = extra();
    for case in g["delta"].as_array().unwrap() {
        let (q, sigma, eps) = (num(&case["q"]), num(&case["sigma"]), num(&case["eps"]));
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, sigma, case["steps"].as_u64().unwrap()))
            .unwrap();
        let got = acc.delta(eps).unwrap();
        let want = num(&case["delta"]);
        assert!(
            got <= want * (1.0 + 1e-9),
            "q={q} sigma={sigma}: {got} above {want}"
        );
        // Identical where dp_accounting's optimal order is an integer (exact in both).
        if num(&case["order"]).fract() == 0.0 {
            assert!(
                rel_err(got, want) < 1e-6,
                "q={q} sigma={sigma}: {got} vs {want}"
            );
        }
        // And delta(epsilon(delta)) gives delta back (up to the grid's discreteness).
        let eps_back = acc.epsilon(got.clamp(1e-300, 0.999)).unwrap();
        assert!(eps_back <= eps + 1e-9, "round trip {eps_back} vs {eps}");
    }
}

#[test]
fn composed_events_add_their_rdp() {
    let g = extra();
    let case = &g["composed"][0];
    let mut events: Vec<DpEvent> = case["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| DpEvent::dp_sgd(num(&e[0]), num(&e[1]), e[2].as_u64().unwrap()))
        .collect();
    events.push(DpEvent::Gaussian {
        noise_multiplier: num(&case["gaussian"]),
    });
    events.push(DpEvent::NoOp);
    let mut acc = RdpAccountant::default();
    acc.compose(&DpEvent::Composed { events }).unwrap();
    let got = acc.epsilon(num(&case["delta"])).unwrap();
    let want = num(&case["eps"]);
    assert!(
        got <= want * (1.0 + 1e-9) && got >= want * 0.98,
        "{got} vs dp_accounting {want}"
    );
}

#[test]
fn prv_epsilon_brackets_the_reference_and_is_tight() {
    use dp_accounting::PrvAccountant;
    let g = golden();
    let mut checked = 0;
    for case in g["forward"].as_array().unwrap() {
        let tags: Vec<&str> = case["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let steps = case["steps"].as_u64().unwrap();
        // Extreme cases need grids of 1e9+ points (prv_accountant fails or needs > 100 GB);
        // 1e5-step cases run in the slower speed test.
        if tags.contains(&"extreme") || steps > 10_000 {
            continue;
        }
        let (q, sigma, delta) = (num(&case["q"]), num(&case["sigma"]), num(&case["delta"]));
        let mut acc = PrvAccountant::new(0.01).unwrap();
        acc.compose(&DpEvent::dp_sgd(q, sigma, steps)).unwrap();
        let b = acc.epsilon_bounds(delta).unwrap();
        let tight = num(&case["tight_reference"]["eps"]);
        let id = case["id"].as_str().unwrap();
        assert!(
            b.lower <= b.estimate && b.estimate <= b.upper,
            "{id}: {b:?}"
        );
        assert!(
            b.upper >= tight - 1e-3,
            "{id}: upper {} below the tight reference {tight}",
            b.upper
        );
        assert!(
            b.upper <= tight + 0.02 + 0.01 * tight,
            "{id}: upper {} vs tight {tight}",
            b.upper
        );
        if let Some(lower) = case["results"]["prv_accountant"]["eps_lower"].as_f64() {
            assert!(
                b.upper >= lower,
                "{id}: below prv_accountant's lower bound {lower}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} cases checked");
}

#[test]
fn prv_calibration_meets_the_target_and_beats_rdp() {
    use dp_accounting::{dp_sgd_epsilon, max_steps};
    let g = golden();
    let prv = AccountantKind::Prv {
        epsilon_error: 0.01,
    };
    for case in g["calibration"].as_array().unwrap() {
        let (q, delta, target) = (
            num(&case["q"]),
            num(&case["delta"]),
            num(&case["target_eps"]),
        );
        let steps = case["steps"].as_u64().unwrap();
        if steps > 10_000 {
            continue;
        }
        let cal = calibrate_noise_multiplier(prv, q, steps, target, delta).unwrap();
        let achieved = dp_sgd_epsilon(prv, q, cal.noise_multiplier, steps, delta).unwrap();
        assert!(
            achieved <= target,
            "{}: {achieved} above {target}",
            case["id"]
        );
        let pld = num(&case["results"]["dp_accounting_pld"]["sigma"]);
        let rdp = num(&case["results"]["dp_accounting_rdp"]["sigma"]);
        let s = cal.noise_multiplier;
        // Conservative by the bracket half-width (0.01 in epsilon), so slightly above the PLD
        // point estimate, and well below RDP.
        assert!(
            s >= pld * 0.999 && s <= pld * 1.03 && s < rdp,
            "{}: sigma {s} (pld {pld}, rdp {rdp})",
            case["id"]
        );
    }
    // Steps: the largest count that fits, and one more does not.
    for kind in [AccountantKind::Rdp, prv] {
        let n = max_steps(kind, 0.01, 1.0, 3.0, 1e-5).unwrap();
        assert!(dp_sgd_epsilon(kind, 0.01, 1.0, n, 1e-5).unwrap() <= 3.0);
        assert!(
            dp_sgd_epsilon(kind, 0.01, 1.0, n + 1, 1e-5).unwrap() > 3.0,
            "{kind:?}: {n}"
        );
    }
}

mod properties {
    //! Properties that must hold for any plan, over random plans.
    use super::*;
    use proptest::prelude::*;

    fn eps(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
        let mut acc = RdpAccountant::default();
        acc.compose(&DpEvent::dp_sgd(q, sigma, steps)).unwrap();
        acc.epsilon(delta).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn epsilon_is_monotone(q in 1e-4f64..0.5, sigma in 0.6f64..8.0, steps in 1u64..20_000, delta in 1e-9f64..1e-3) {
            let base = eps(q, sigma, steps, delta);
            prop_assert!(eps(q, sigma, steps + steps / 2 + 1, delta) >= base);
            prop_assert!(eps((q * 1.5).min(1.0), sigma, steps, delta) >= base);
            prop_assert!(eps(q, sigma * 0.8, steps, delta) >= base);
            prop_assert!(eps(q, sigma, steps, delta * 0.1) >= base);
        }

        #[test]
        fn full_batch_is_the_plain_gaussian_and_self_composition_adds(sigma in 0.5f64..10.0, steps in 1u64..50) {
            let mut sampled = RdpAccountant::default();
            sampled.compose(&DpEvent::dp_sgd(1.0, sigma, steps)).unwrap();
            let mut plain = RdpAccountant::default();
            for _ in 0..steps {
                plain.compose(&DpEvent::Gaussian { noise_multiplier: sigma }).unwrap();
            }
            for (a, b) in sampled.rdp().iter().zip(plain.rdp()) {
                prop_assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0));
            }
        }
    }
}

#[test]
fn repeat_and_select_matches_dp_accounting() {
    use dp_accounting::{repeat_and_select_rdp, tnb_gamma, FractionalSeries, RunCount};
    let g = golden();
    for case in g["repeat_and_select"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let (q, sigma, delta, mean) = (
            num(&case["q"]),
            num(&case["sigma"]),
            num(&case["delta"]),
            num(&case["mean"]),
        );
        let steps = case["steps"].as_u64().unwrap();
        let shape = num(&case["shape"]);
        let runs = if shape.is_infinite() {
            RunCount::Poisson
        } else {
            RunCount::TruncatedNegativeBinomial { shape }
        };
        if let Some(gamma) = case["tnb_gamma"].as_f64() {
            assert!(rel_err(tnb_gamma(shape, mean), gamma) < 1e-8, "{id}: gamma");
        }
        // The transform alone, on dp_accounting's own single-run curve: 1e-9.
        if let Some(base) = case["base_rdp"].as_array() {
            let base: Vec<f64> = base.iter().map(num).collect();
            let got = repeat_and_select_rdp(&DEFAULT_ORDERS, &base, mean, runs).unwrap();
            for (g, w) in got
                .iter()
                .zip(case["repeat_and_select_rdp"].as_array().unwrap())
            {
                assert!(rel_err(*g, num(w)) < 1e-9, "{id}: {g} vs {w}");
            }
        }
        // End to end, with dp_accounting's conservative fractional series: 1e-6.
        let single = DpEvent::dp_sgd(q, sigma, steps);
        let tuned = DpEvent::RepeatAndSelect {
            event: Box::new(single.clone()),
            mean,
            runs,
        };
        let mut acc = RdpAccountant::default().with_series(FractionalSeries::Conservative);
        acc.compose(&tuned).unwrap();
        let got = acc.epsilon_and_order(delta).unwrap();
        let want = &case["repeat_and_select"];
        assert!(
            rel_err(got.epsilon, num(&want["eps"])) < 1e-6,
            "{id}: {got:?} vs {want}"
        );
        // The exact series is never looser.
        let mut exact = RdpAccountant::default();
        exact.compose(&tuned).unwrap();
        assert!(
            exact.epsilon(delta).unwrap() <= got.epsilon * (1.0 + 1e-12),
            "{id}"
        );
    }
}

#[test]
fn tan_rows_match_dp_accounting() {
    use dp_accounting::{tan_table, FractionalSeries};
    let g = golden();
    for example in g["tan"].as_array().unwrap() {
        let name = example["name"].as_str().unwrap();
        let scales: Vec<f64> = example["k"].as_array().unwrap().iter().map(num).collect();
        let table = tan_table(
            example["N"].as_u64().unwrap(),
            num(&example["B_ref"]),
            num(&example["sigma_ref"]),
            example["S"].as_u64().unwrap(),
            num(&example["delta"]),
            &scales,
            FractionalSeries::Conservative,
        )
        .unwrap();
        let limit = &example["tan_limit"];
        assert!(
            rel_err(table.eta, num(&limit["eta"])) < 1e-12,
            "{name}: eta"
        );
        assert!(
            rel_err(table.tan_limit_epsilon, num(&limit["eps_rdp_gaussian_eta"])) < 1e-9,
            "{name}: limit"
        );
        for (row, want) in table.rows.iter().zip(example["rows"].as_array().unwrap()) {
            assert!(rel_err(row.batch_size, num(&want["B"])) < 1e-12);
            assert!(rel_err(row.noise_multiplier, num(&want["sigma"])) < 1e-12);
            assert!(rel_err(row.sampling_rate, num(&want["q"])) < 1e-12);
            assert!(
                rel_err(
                    row.effective_noise,
                    num(&want["effective_noise_sigma_over_B"])
                ) < 1e-12
            );
            let eps = num(&want["eps_dp_accounting_rdp"]["eps"]);
            assert!(
                rel_err(row.epsilon, eps) < 1e-6,
                "{name} k={}: {} vs {eps}",
                row.scale,
                row.epsilon
            );
            assert_eq!(row.equivalence_holds, row.noise_multiplier >= 2.0);
        }
    }
}

#[test]
fn audit_estimates_match_the_reference_values() {
    use dp_accounting::audit::{estimate_epsilon, AuditCounts};
    let g: Value = serde_json::from_str(include_str!("golden/audit_public.json")).unwrap();
    for case in g["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let counts = AuditCounts {
            false_positives: case["fp"].as_u64().unwrap(),
            false_negatives: case["fn"].as_u64().unwrap(),
            positives: case["n_pos"].as_u64().unwrap(),
            negatives: case["n_neg"].as_u64().unwrap(),
        };
        let start = std::time::Instant::now();
        let est =
            estimate_epsilon(counts, num(&case["delta"]), num(&case["credible_level"])).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        let close = |got: f64, want: &Value, tol: f64, what: &str| {
            let want = num(want);
            let ok = if want.is_infinite() {
                got.is_infinite()
            } else {
                (got - want).abs() <= tol
            };
            assert!(ok, "{id} {what}: {got} vs {want}");
        };
        let bayes = &case["bayes"];
        close(
            est.bayes.eps_lo_one_sided,
            &bayes["eps_lo_one_sided"],
            1e-4,
            "bayes lo 1-sided",
        );
        close(
            est.bayes.eps_lo_two_sided,
            &bayes["eps_lo_two_sided"],
            1e-4,
            "bayes lo 2-sided",
        );
        close(
            est.bayes.eps_hi_two_sided,
            &bayes["eps_hi_two_sided"],
            1e-4,
            "bayes hi 2-sided",
        );
        close(
            est.bayes.posterior_median,
            &bayes["posterior_median"],
            1e-4,
            "bayes median",
        );
        close(
            est.bayes.prob_eps_is_zero,
            &bayes["prob_eps_is_zero"],
            1e-6,
            "P[eps = 0]",
        );
        for (name, got) in [
            ("clopper_pearson", &est.clopper_pearson),
            ("jeffreys", &est.jeffreys),
        ] {
            let want = &case[name];
            close(
                got.eps_lo_one_sided,
                &want["eps_lo_one_sided"],
                1e-9,
                &format!("{name} lo 1-sided"),
            );
            close(
                got.eps_lo_two_sided,
                &want["eps_lo_two_sided"],
                1e-9,
                &format!("{name} lo 2-sided"),
            );
            close(
                got.eps_hi_two_sided,
                &want["eps_hi_two_sided"],
                1e-9,
                &format!("{name} hi 2-sided"),
            );
            for (bounds, key) in [
                (&got.rate_bounds_one_sided, "rate_bounds_one_sided"),
                (&got.rate_bounds_two_sided, "rate_bounds_two_sided"),
            ] {
                for (i, rate) in ["fpr", "fnr"].iter().enumerate() {
                    for j in 0..2 {
                        close(
                            bounds[i][j],
                            &want[key][rate][j],
                            1e-9,
                            &format!("{name} {key} {rate}[{j}]"),
                        );
                    }
                }
            }
        }
        println!("{id}: {seconds:.3} s");
        assert!(seconds < 5.0, "{id} took {seconds} s");
    }
}

// Matrix factorization: `tests/golden/mf_public.json` (numpy/scipy float64 reference,
// cross-checked against jax_privacy).

mod matrix_factorization {
    use super::*;
    use dp_accounting::mf::{
        mean_loss_lower_bound, optimize_banded, optimize_blt, optimize_nu, Blt, Evaluation,
        Objective, Participation, Strategy, Workload,
    };
    use std::time::Instant;

    fn golden() -> Value {
        serde_json::from_str(include_str!("golden/mf_public.json")).expect("mf golden parses")
    }

    struct Case {
        id: String,
        n: usize,
        participation: Participation,
        workload: Workload,
        strategies: Vec<Value>,
    }

    fn cases() -> Vec<Case> {
        golden()["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let n = c["n"].as_u64().unwrap() as usize;
                let (k, b) = (c["k"].as_u64().unwrap(), c["b"].as_u64().unwrap());
                assert_eq!(n as u64, k * b);
                let name = c["workload"].as_str().unwrap();
                let workload = match name.strip_prefix("momentum_prefix(beta=") {
                    Some(rest) => {
                        Workload::momentum(rest.trim_end_matches(')').parse().unwrap()).unwrap()
                    }
                    None => {
                        assert_eq!(name, "prefix");
                        Workload::prefix()
                    }
                };
                Case {
                    id: format!("{name} n={n} k={k}"),
                    n,
                    participation: Participation::min_separation(k, b).unwrap(),
                    workload,
                    strategies: c["strategies"].as_array().unwrap().clone(),
                }
            })
            .collect()
    }

    /// Compares every metric the entry lists.
    fn check(got: &Evaluation, want: &Value, tolerance: f64, label: &str) {
        let pairs = [
            ("sens2", got.sensitivity.squared),
            ("mean_err", got.mean_error),
            ("max_err", got.max_error),
            ("loss_mean", got.loss_mean()),
            ("loss_max", got.loss_max()),
            ("rmse", got.rmse()),
            ("max_rmse", got.max_rmse()),
        ];
        for (key, value) in pairs {
            let w = num(&want[key]);
            assert!(
                rel_err(value, w) <= tolerance,
                "{label}: {key} {value} vs {w} (relative {:e})",
                rel_err(value, w)
            );
        }
        assert!(
            got.sensitivity.exact,
            "{label}: sensitivity should be exact"
        );
    }

    #[test]
    fn closed_form_strategies_match_to_1e_9() {
        let prefix = Workload::prefix();
        let mut checked = 0;
        for case in cases() {
            let n = case.n;
            let dpsgd_rmse = Strategy::identity(n)
                .unwrap()
                .evaluate(&case.workload, &case.participation)
                .rmse();
            for entry in &case.strategies {
                let name = entry["strategy"].as_str().unwrap();
                let bands = entry["bands"].as_u64().map(|b| b as usize);
                let strategy = match name {
                    "dpsgd" => Strategy::identity(n),
                    "sqrt_toeplitz" | "sqrt_prefix_toeplitz" => Strategy::square_root(n, &prefix),
                    "sqrt_workload_toeplitz" => Strategy::square_root(n, &case.workload),
                    "nu_dpftrl" => Strategy::nu_dp_ftrl(n, num(&entry["nu"])),
                    "bsr" => Strategy::banded_square_root(n, bands.unwrap(), &case.workload),
                    "bisr" => {
                        Strategy::banded_inverse_square_root(n, bands.unwrap(), &case.workload)
                    }
                    "svd_lower_bound" => {
                        let loss =
                            mean_loss_lower_bound(n, &case.workload, &case.participation).unwrap();
                        assert!(
                            rel_err(loss, num(&entry["loss_mean"])) <= 1e-9,
                            "{}",
                            case.id
                        );
                        assert!(rel_err(loss.sqrt(), num(&entry["rmse"])) <= 1e-9);
                        checked += 1;
                        continue;
                    }
                    _ => continue,
                }
                .unwrap();
                let label = format!("{} {name}", case.id);
                let got = strategy.evaluate(&case.workload, &case.participation);
                check(&got, entry, 1e-9, &label);
                let ratio = got.rmse() / dpsgd_rmse;
                assert!(
                    rel_err(ratio, num(&entry["rmse_ratio_vs_dpsgd"])) <= 1e-9,
                    "{label}"
                );
                if let Some(memory) = entry["memory_vectors"].as_u64() {
                    assert_eq!(
                        strategy.recurrence().memory_vectors() as u64,
                        memory,
                        "{label}"
                    );
                }
                if let Some(head) = entry["c_head"].as_array() {
                    for (c, want) in strategy.coefs().iter().zip(head) {
                        assert!(rel_err(*c, num(want)) <= 1e-12, "{label}: c_head");
                    }
                }
                checked += 1;
            }
        }
        // 9 prefix cases x 6 closed forms, 2 momentum cases x 3.
        assert_eq!(checked, 60);
    }

    #[test]
    fn blt_metrics_recomputed_from_the_listed_decays_match_to_1e_6() {
        let mut checked = 0;
        for case in cases() {
            for entry in case
                .strategies
                .iter()
                .filter(|e| e["strategy"] == "blt_opt")
            {
                let list = |key: &str| -> Vec<f64> {
                    entry[key].as_array().unwrap().iter().map(num).collect()
                };
                let blt = Blt::from_decays(list("buf_decay"), list("inv_buf_decay")).unwrap();
                let label = format!("{} blt {}", case.id, blt.buffers());
                for (got, key) in [
                    (blt.output_scale(), "output_scale"),
                    (blt.inv_output_scale(), "inv_output_scale"),
                ] {
                    let want = list(key);
                    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-6 * scale, "{label}: {key} {g} vs {w}");
                    }
                }
                let strategy = Strategy::blt(case.n, &blt).unwrap();
                assert_eq!(
                    strategy.recurrence().memory_vectors() as u64,
                    entry["memory_vectors"].as_u64().unwrap()
                );
                check(
                    &strategy.evaluate(&case.workload, &case.participation),
                    entry,
                    1e-6,
                    &label,
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 42);
    }

    #[test]
    fn optimizers_reach_the_reference_within_0_2_percent() {
        let mut worst: f64 = 0.0;
        for case in cases() {
            let (n, w, p) = (case.n, &case.workload, &case.participation);
            for entry in &case.strategies {
                let name = entry["strategy"].as_str().unwrap();
                let start = Instant::now();
                let got = match name {
                    "banded_toeplitz_opt" => {
                        let bands = entry["bands"].as_u64().unwrap() as usize;
                        optimize_banded(n, bands, w, p, Objective::Mean).unwrap()
                    }
                    "nu_dpftrl" => optimize_nu(n, w, p, Objective::Mean).unwrap(),
                    "blt_opt" => {
                        let m = entry["num_buffers"].as_u64().unwrap() as usize;
                        let blt = optimize_blt(n, m, w, p, Objective::Mean).unwrap();
                        Strategy::blt(n, &blt).unwrap()
                    }
                    _ => continue,
                };
                let e = got.evaluate(w, p);
                assert!(e.sensitivity.exact);
                let ratio = e.rmse() / num(&entry["rmse"]);
                println!(
                    "{} {name} {:?}: rmse {:.9} = {ratio:.9} x reference ({:.2} s)",
                    case.id,
                    got.kind(),
                    e.rmse(),
                    start.elapsed().as_secs_f64()
                );
                assert!(ratio <= 1.002, "{} {name}: {ratio}", case.id);
                worst = worst.max(ratio);
            }
        }
        println!("worst ratio {worst:.6}");
    }

    #[test]
    fn optimizing_10000_steps_takes_under_10_seconds() {
        let (n, w) = (10_000, Workload::prefix());
        let sgd = |p: &Participation| Strategy::identity(n).unwrap().evaluate(&w, p).rmse();
        for epochs in [1, 4, 16] {
            let p = Participation::epochs(n, epochs).unwrap();
            let start = Instant::now();
            let banded = optimize_banded(n, n / epochs as usize, &w, &p, Objective::Mean).unwrap();
            let banded_seconds = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let blt = optimize_blt(n, 4, &w, &p, Objective::Mean).unwrap();
            let blt_seconds = start.elapsed().as_secs_f64();
            let banded_rmse = banded.evaluate(&w, &p).rmse();
            let blt_rmse = Strategy::blt(n, &blt).unwrap().evaluate(&w, &p).rmse();
            println!(
                "n = {n}, {epochs} epochs: banded rmse {banded_rmse:.4} ({:.4} x DP-SGD) in {banded_seconds:.2} s; \
                 BLT-4 rmse {blt_rmse:.4} ({:.4} x DP-SGD) in {blt_seconds:.2} s",
                banded_rmse / sgd(&p),
                blt_rmse / sgd(&p)
            );
            assert!(banded_seconds < 10.0 && blt_seconds < 10.0);
        }
    }

    #[test]
    fn blt_optimizer_reproduces_jax_privacy_single_participation_golden() {
        let g = golden();
        let check = &g["reference_checks"][0];
        let n = check["n"].as_u64().unwrap() as usize;
        let blt = optimize_blt(
            n,
            2,
            &Workload::prefix(),
            &Participation::single(),
            Objective::Max,
        )
        .unwrap();
        let expected =
            |key: &str| -> Vec<f64> { check[key].as_array().unwrap().iter().map(num).collect() };
        for (got, key) in [
            (blt.buf_decay(), "expected_buf_decay"),
            (blt.output_scale(), "expected_output_scale"),
        ] {
            for (g, w) in got.iter().zip(expected(key)) {
                assert!(rel_err(*g, w) <= 1e-5, "{key}: {g} vs {w}");
            }
        }
        let e = Strategy::blt(n, &blt)
            .unwrap()
            .evaluate(&Workload::prefix(), &Participation::single());
        assert!(
            e.max_rmse() <= num(&check["max_rmse"]) * (1.0 + 1e-9),
            "{} vs {}",
            e.max_rmse(),
            check["max_rmse"]
        );
    }

    #[test]
    fn accountants_treat_a_run_as_one_gaussian_or_as_dp_sgd_when_banded_and_sampled() {
        use dp_accounting::mf::gaussian_epsilon;
        use dp_accounting::PrvAccountant;
        let n = 1000;
        let sqrt = Strategy::square_root(n, &Workload::prefix()).unwrap();
        let event = sqrt.dp_event(0.8, None).unwrap();
        let exact = gaussian_epsilon(0.8, 1e-5).unwrap();
        let mut rdp = RdpAccountant::default();
        rdp.compose(&event).unwrap();
        let rdp_eps = rdp.epsilon(1e-5).unwrap();
        let mut prv = PrvAccountant::new(0.01).unwrap();
        prv.compose(&event).unwrap();
        let bracket = prv.epsilon_bounds(1e-5).unwrap();
        assert!(
            bracket.lower <= exact && exact <= bracket.upper,
            "{bracket:?} vs {exact}"
        );
        assert!(
            exact < rdp_eps && rdp_eps < exact * 1.2,
            "{rdp_eps} vs {exact}"
        );
        // Amplification is for banded strategies only.
        assert!(sqrt.dp_event(0.8, Some(0.01)).is_err());
        let blt = Blt::from_decays(vec![0.99], vec![0.8]).unwrap();
        assert!(Strategy::blt(n, &blt)
            .unwrap()
            .dp_event(0.8, Some(0.01))
            .is_err());
        let banded = Strategy::banded_square_root(n, 10, &Workload::prefix()).unwrap();
        let DpEvent::MatrixFactorization {
            amplification: Some(a),
            ..
        } = banded.dp_event(0.8, Some(0.01)).unwrap()
        else {
            panic!("banded strategies are amplified")
        };
        assert_eq!((a.bands, a.sampling_probability), (10, 0.01));
        // The event round-trips through JSON.
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains("\"type\":\"matrix_factorization\""), "{json}");
        assert_eq!(serde_json::from_str::<DpEvent>(&json).unwrap(), event);
    }

    mod properties {
        use super::*;
        use dp_accounting::mf::{Participation, Strategy, Workload};
        use proptest::prelude::*;

        fn rdp_of(event: &DpEvent) -> Vec<f64> {
            let mut acc = RdpAccountant::default();
            acc.compose(event).unwrap();
            acc.rdp().to_vec()
        }

        fn same(a: &[f64], b: &[f64]) -> bool {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-10 * x.abs().max(1.0))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]

            #[test]
            fn identity_strategy_is_dp_sgd(sigma in 0.5f64..10.0, epochs in 1u64..20, per_epoch in 1usize..200, q in 1e-3f64..1.0) {
                let n = per_epoch * epochs as usize;
                let identity = Strategy::identity(n).unwrap();
                let p = Participation::epochs(n, epochs).unwrap();
                // sens(I) = sqrt(k): the noise per step is sigma sqrt(k), k full-batch steps.
                prop_assert!((identity.sensitivity(&p).squared - epochs as f64).abs() < 1e-12);
                let unamplified = rdp_of(&identity.dp_event(sigma, None).unwrap());
                let k_steps = DpEvent::dp_sgd(1.0, sigma * (epochs as f64).sqrt(), epochs);
                prop_assert!(same(&unamplified, &rdp_of(&k_steps)));
                // Sampled, C = I is one band: exactly DP-SGD for n steps.
                let amplified = rdp_of(&identity.dp_event(sigma, Some(q)).unwrap());
                prop_assert!(same(&amplified, &rdp_of(&DpEvent::dp_sgd(q, sigma, n as u64))));
            }

            #[test]
            fn banded_sensitivity_is_k_times_the_squared_norm(epochs in 1u64..12, b in 1usize..64, bands_frac in 0.0f64..1.0) {
                let n = b * epochs as usize;
                let bands = 1 + (bands_frac * (b - 1) as f64) as usize;
                let s = Strategy::banded_square_root(n, bands, &Workload::prefix()).unwrap();
                let p = Participation::epochs(n, epochs).unwrap();
                let norm2: f64 = s.coefs()[..bands].iter().map(|c| c * c).sum();
                let sens = s.sensitivity(&p);
                prop_assert!(sens.exact);
                prop_assert!((sens.squared - epochs as f64 * norm2).abs() < 1e-10 * sens.squared);
            }

            #[test]
            fn noise_multiplier_calibration_meets_the_target(epsilon in 0.05f64..20.0, log_delta in -12f64..-3.0) {
                use dp_accounting::mf::{gaussian_epsilon, gaussian_noise_multiplier};
                let delta = 10f64.powf(log_delta);
                let sigma = gaussian_noise_multiplier(epsilon, delta).unwrap();
                let achieved = gaussian_epsilon(sigma, delta).unwrap();
                prop_assert!(achieved <= epsilon * (1.0 + 1e-9));
                prop_assert!(achieved >= epsilon * (1.0 - 1e-6));
            }
        }
    }
}
