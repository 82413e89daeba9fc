//! The `dp-accounting` command: its JSON contract, its numbers, and one-line errors with exit
//! code 2 for bad input.

use std::process::{Command, Output};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dp-accounting"))
        .args(args)
        .output()
        .expect("runs")
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

const PLAN: [&str; 6] = [
    "--sampling-rate",
    "0.01",
    "--steps",
    "10000",
    "--delta",
    "1e-5",
];

#[test]
fn epsilon_json_has_the_contract_fields() {
    let mut args = vec!["epsilon", "--noise-multiplier", "1", "--accountant", "rdp"];
    args.extend(PLAN);
    let v = json(&args);
    for field in [
        "epsilon",
        "delta",
        "accountant",
        "sampling_rate",
        "noise_multiplier",
        "steps",
        "order",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    // dp_accounting's signed-series value for this case (golden pub-fwd-008).
    assert!(
        (v["epsilon"].as_f64().unwrap() - 6.712738297403128).abs() < 1e-6,
        "{v}"
    );
    assert_eq!(v["order"].as_f64(), Some(4.1));

    let mut args = vec!["epsilon", "--noise-multiplier", "1", "--accountant", "prv"];
    args.extend(PLAN);
    let v = json(&args);
    let (lo, up, eps) = (
        v["epsilon_lower"].as_f64().unwrap(),
        v["epsilon_upper"].as_f64().unwrap(),
        v["epsilon"].as_f64().unwrap(),
    );
    assert_eq!(eps, up, "PRV reports its upper bound");
    // prv_accountant's bracket for this case is [6.1774, 6.1980].
    assert!(lo < 6.18771 && up > 6.18771 && up < 6.21, "{v}");
}

#[test]
fn dataset_and_batch_size_or_epochs_give_the_same_plan() {
    let a = json(&[
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--epochs",
        "100",
        "--delta",
        "1e-5",
        "--noise-multiplier",
        "1",
        "--accountant",
        "rdp",
    ]);
    let b = json(&[
        "epsilon",
        "--dataset-size",
        "60000",
        "--batch-size",
        "600",
        "--steps",
        "10000",
        "--delta",
        "1e-5",
        "--noise-multiplier",
        "1",
        "--accountant",
        "rdp",
    ]);
    assert_eq!(a["steps"], 10000);
    assert_eq!(a["epsilon"], b["epsilon"]);
}

#[test]
fn sigma_meets_the_target_and_steps_is_the_largest_that_fits() {
    for accountant in ["rdp", "prv"] {
        let mut args = vec!["sigma", "--epsilon", "8", "--accountant", accountant];
        args.extend(PLAN);
        let v = json(&args);
        let sigma = v["noise_multiplier"].as_f64().unwrap();
        assert!(v["epsilon"].as_f64().unwrap() <= 8.0, "{v}");
        // dp_accounting: 0.916882 (RDP), 0.882531 (PLD).
        let (lo, hi) = if accountant == "rdp" {
            (0.9160, 0.91689)
        } else {
            (0.8825, 0.8860)
        };
        assert!((lo..hi).contains(&sigma), "{accountant}: {sigma}");

        let sigma_text = sigma.to_string();
        let v = json(&[
            "steps",
            "--sampling-rate",
            "0.01",
            "--noise-multiplier",
            &sigma_text,
            "--epsilon",
            "8",
            "--delta",
            "1e-5",
            "--accountant",
            accountant,
        ]);
        let steps = v["steps"].as_u64().unwrap();
        assert!((10_000..10_100).contains(&steps), "{accountant}: {steps}");
    }
}

#[test]
fn curve_writes_csv_and_svg() {
    let dir = std::env::temp_dir().join(format!("dp-accounting-curve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, svg) = (dir.join("curve.csv"), dir.join("curve.svg"));
    let out = run(&[
        "curve",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--points",
        "6",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "steps,epsilon_rdp,epsilon_prv");
    assert_eq!(rows.last().unwrap().split(',').next(), Some("1000"));
    let eps: Vec<f64> = rows[1..]
        .iter()
        .map(|r| r.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(
        eps.windows(2).all(|w| w[0] <= w[1]),
        "epsilon grows with steps: {eps:?}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<polyline").count() == 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_is_one_line_naming_the_flag_with_exit_code_2() {
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--sampling-rate",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "1.5",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--sampling-rate",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "-1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "NaN",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--delta",
                "1",
            ],
            "--delta",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "0",
                "--delta",
                "1e-5",
            ],
            "--steps",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "inf",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--noise-multiplier",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--dataset-size",
                "100",
                "--batch-size",
                "10",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "--sampling-rate",
        ),
        (
            &[
                "epsilon",
                "--sampling-rate",
                "0.1",
                "--noise-multiplier",
                "1",
                "--steps",
                "10",
                "--epochs",
                "1",
                "--delta",
                "1e-5",
            ],
            "--steps",
        ),
    ];
    for (args, flag) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
    // An unreachable target is a usage error too, not a panic or a silent answer.
    let out = run(&[
        "steps",
        "--sampling-rate",
        "1",
        "--noise-multiplier",
        "0.1",
        "--epsilon",
        "0.001",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tune_and_tan_report_the_contract_fields() {
    let v = json(&[
        "tune",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--runs",
        "poisson",
        "--mean",
        "10",
    ]);
    let (eps, single) = (
        v["epsilon"].as_f64().unwrap(),
        v["single_run_epsilon"].as_f64().unwrap(),
    );
    // dp_accounting: 4.3295 (its fractional series is slightly looser) and 2.1014 for one run.
    assert!(eps <= 4.329497680252047 && eps > 4.32, "{v}");
    assert!((single - 2.1014).abs() < 1e-3, "{v}");
    let out = run(&[
        "tune",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--runs",
        "truncated-negative-binomial",
        "--mean",
        "10",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--shape is required for the truncated negative binomial"
    );

    let v = json(&[
        "tan",
        "--dataset-size",
        "50000",
        "--batch-size",
        "4096",
        "--noise-multiplier",
        "3",
        "--steps",
        "2500",
        "--delta",
        "1e-5",
        "--scales",
        "0.0625,0.25,1,4",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        for field in [
            "batch_size",
            "noise_multiplier",
            "sampling_rate",
            "epsilon",
            "effective_noise",
        ] {
            assert!(row.get(field).is_some(), "missing {field}: {row}");
        }
        assert_eq!(row["effective_noise"].as_f64(), Some(3.0 / 4096.0));
    }
    // The reference row (k = 1): dp_accounting RDP gives 7.0985.
    assert!((rows[2]["epsilon"].as_f64().unwrap() - 7.0985).abs() < 0.01);
}

#[test]
fn audit_json_uses_the_golden_field_names() {
    // Golden case P3 (zero errors): finite Bayesian bounds, an infinite Clopper-Pearson upper end.
    let v = json(&[
        "audit",
        "--fp",
        "0",
        "--fn",
        "0",
        "--positives",
        "200",
        "--negatives",
        "200",
        "--delta",
        "1e-5",
        "--level",
        "0.95",
    ]);
    assert!(
        (v["bayes"]["eps_lo_one_sided"].as_f64().unwrap() - 5.5941).abs() < 1e-3,
        "{v}"
    );
    assert!(
        (v["bayes"]["eps_hi_two_sided"].as_f64().unwrap() - 14.2899).abs() < 1e-3,
        "{v}"
    );
    assert!(
        v["bayes"]["posterior_median"].is_number() && v["bayes"]["prob_eps_is_zero"].is_number()
    );
    assert_eq!(v["clopper_pearson"]["eps_hi_two_sided"], "inf");
    assert!((v["clopper_pearson"]["eps_lo_one_sided"].as_f64().unwrap() - 3.9837).abs() < 1e-3);
    let out = run(&[
        "audit",
        "--fp",
        "5",
        "--fn",
        "0",
        "--positives",
        "10",
        "--negatives",
        "4",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fp"));
}

#[test]
fn audit_answers_for_pure_dp_at_delta_zero() {
    let audit = |delta: &str| {
        json(&[
            "audit",
            "--fp",
            "50",
            "--fn",
            "400",
            "--positives",
            "1000",
            "--negatives",
            "1000",
            "--delta",
            delta,
        ])
    };
    let (pure, approx) = (audit("0"), audit("1e-5"));
    let num = |v: &Value, path: &[&str]| {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?}: {v}"))
    };
    // At delta 0 the region's boundary is alpha + e^eps beta >= 1 and its mirror: the plug-in
    // rates (0.05, 0.4) give exactly ln(0.6 / 0.05).
    assert!(
        (num(&pure, &["eps_plug_in"]) - (0.6f64 / 0.05).ln()).abs() < 1e-12,
        "{pure}"
    );
    // Clopper-Pearson: the corner of the one-sided rate box, in closed form.
    let bounds = &pure["clopper_pearson"]["rate_bounds_one_sided"];
    let (fpr_hi, fnr_hi) = (
        bounds["fpr"][1].as_f64().unwrap(),
        bounds["fnr"][1].as_f64().unwrap(),
    );
    // Both upper ends stay below a half, so the lower bound is ln((1 - beta) / alpha) there.
    assert!(fpr_hi < fnr_hi && fnr_hi < 0.5, "{bounds}");
    let closed_form = ((1.0 - fnr_hi) / fpr_hi).ln();
    let cp = num(&pure, &["clopper_pearson", "eps_lo_one_sided"]);
    assert!((cp - closed_form).abs() < 1e-12, "{cp} vs {closed_form}");
    // A smaller delta can only raise the lower bounds, and 1e-5 barely moves them here.
    for path in [
        ["bayes", "eps_lo_one_sided"],
        ["bayes", "eps_lo_two_sided"],
        ["clopper_pearson", "eps_lo_one_sided"],
    ] {
        let (p, a) = (num(&pure, &path), num(&approx, &path));
        assert!(
            p >= a && p - a < 1e-3,
            "{path:?}: {p} at delta 0, {a} at 1e-5"
        );
    }
    let out = run(&["audit", "--fp", "1", "--fn", "1", "--positives", "9"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "audit",
        "--fp",
        "1",
        "--fn",
        "1",
        "--positives",
        "9",
        "--negatives",
        "9",
        "--delta",
        "-0.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[0, 1)"));
}

/// `dp-accounting mf ARGS --json`.
fn mf(args: &[&str]) -> Value {
    let mut all = vec!["mf"];
    all.extend_from_slice(args);
    json(&all)
}

#[test]
fn mf_reports_the_golden_error_and_the_gaussian_epsilon() {
    // tests/golden/mf_public.json, prefix n = 1024, k = 4.
    let plan = ["--steps", "1024", "--epochs", "4"];
    let with = |extra: &[&str]| {
        let mut args = plan.to_vec();
        args.extend_from_slice(extra);
        mf(&args)
    };
    for (strategy, rmse) in [
        ("identity", 45.2769256907),
        ("sqrt", 7.54288287831),
        ("bsr", 6.48593913479),
        ("bisr", 7.06330373707),
    ] {
        let v = with(&["--strategy", strategy]);
        let got = v["rmse"].as_f64().unwrap();
        assert!(
            (got / rmse - 1.0).abs() < 1e-9,
            "{strategy}: {got} vs {rmse}"
        );
        for field in [
            "sensitivity",
            "sensitivity_squared",
            "sensitivity_exact",
            "rmse",
            "max_rmse",
            "dpsgd_rmse",
            "rmse_ratio_vs_dpsgd",
            "memory_vectors",
            "recurrence",
            "lower_bound_rmse",
        ] {
            assert!(v.get(field).is_some(), "{strategy}: missing {field} in {v}");
        }
        assert_eq!(v["strategy"], strategy);
    }
    let nu = with(&["--strategy", "nu", "--nu", "0.997563524438"]);
    assert!((nu["rmse"].as_f64().unwrap() / 6.85645454616 - 1.0).abs() < 1e-6);
    for (strategy, rmse) in [("banded", 6.44414336823), ("blt", 6.66893460003)] {
        let v = with(&["--strategy", strategy]);
        let ratio = v["rmse"].as_f64().unwrap() / rmse;
        assert!(ratio <= 1.002, "{strategy}: {ratio}");
    }
    let blt = with(&["--strategy", "blt", "--buffers", "2"]);
    // Fixed batches by position: the sensitivity holds for zero-out neighbours only.
    assert_eq!(blt["neighbouring_relation"], "zero_out");
    let text = run(&[
        "mf",
        "--steps",
        "1024",
        "--epochs",
        "4",
        "--strategy",
        "blt",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("zero-out") && !text.contains("add/remove one example;"),
        "{text}"
    );
    assert_eq!(blt["memory_vectors"], 2);
    assert_eq!(blt["recurrence"]["form"], "buffered");
    assert_eq!(blt["blt"]["buf_decay"].as_array().unwrap().len(), 2);

    // Unamplified: one Gaussian mechanism, whatever the strategy. Reference: bisection of
    // the analytic Gaussian profile with Python's math.erfc.
    for strategy in ["identity", "sqrt", "banded"] {
        let v = with(&[
            "--strategy",
            strategy,
            "--noise-multiplier",
            "1",
            "--delta",
            "1e-5",
        ]);
        let eps = v["epsilon"].as_f64().unwrap();
        assert!((eps - 4.3771780956812245).abs() < 1e-9, "{strategy}: {eps}");
        assert_eq!(v["event"]["type"], "matrix_factorization");
    }
}

#[test]
fn mf_amplified_identity_is_dp_sgd() {
    let v = mf(&[
        "--steps",
        "2000",
        "--strategy",
        "identity",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
    ]);
    let sgd = json(&[
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--steps",
        "2000",
        "--noise-multiplier",
        "1",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
    ]);
    assert_eq!(v["epsilon"], sgd["epsilon"]);
    assert_eq!(v["event"]["amplification"]["bands"], 1);
    // Ten bands: as private as DP-SGD for a tenth of the steps.
    let banded = mf(&[
        "--steps",
        "2000",
        "--strategy",
        "banded",
        "--bands",
        "10",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
    ]);
    let tenth = json(&[
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--steps",
        "200",
        "--noise-multiplier",
        "1",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
    ]);
    assert_eq!(banded["epsilon"], tenth["epsilon"]);
    // The noise is scaled by one participation's sensitivity (the largest column norm).
    assert_eq!(banded["max_participations"], 1);
}

#[test]
fn mf_bad_input_is_one_line_naming_the_flag_and_help_teaches_the_strategies() {
    let cases: [(&[&str], &str); 10] = [
        (&["--steps", "0", "--strategy", "sqrt"], "--steps"),
        (
            &["--steps", "10", "--epochs", "11", "--strategy", "sqrt"],
            "--epochs",
        ),
        (
            &["--steps", "10", "--strategy", "sqrt", "--bands", "3"],
            "--bands",
        ),
        (
            &[
                "--steps",
                "12",
                "--epochs",
                "4",
                "--strategy",
                "banded",
                "--bands",
                "4",
            ],
            "--bands",
        ),
        (
            &["--steps", "10", "--strategy", "blt", "--buffers", "0"],
            "--buffers",
        ),
        (
            &["--steps", "10", "--strategy", "nu", "--nu", "1.5"],
            "--nu",
        ),
        (
            &[
                "--steps",
                "10",
                "--strategy",
                "sqrt",
                "--workload",
                "momentum",
            ],
            "--momentum",
        ),
        (
            &[
                "--steps",
                "10",
                "--strategy",
                "sqrt",
                "--noise-multiplier",
                "1",
            ],
            "--delta",
        ),
        (
            &[
                "--steps",
                "10",
                "--strategy",
                "blt",
                "--sampling-rate",
                "0.1",
            ],
            "--sampling-rate",
        ),
        (&["--steps", "10", "--strategy", "dense"], "--strategy"),
    ];
    for (args, flag) in cases {
        let mut all = vec!["mf"];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
    }
    let help = run(&["mf", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "identity",
        "sqrt",
        "nu-DP-FTRL",
        "bsr",
        "bisr",
        "banded",
        "blt",
        "sens(C)",
    ] {
        assert!(text.contains(word), "help lacks {word}");
    }
}
