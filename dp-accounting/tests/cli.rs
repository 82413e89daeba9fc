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

/// Runs the command with a deadline: a hang fails the test instead of stalling the suite.
fn run_within(args: &[&str], seconds: u64) -> Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dp-accounting"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let start = Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if start.elapsed() > Duration::from_secs(seconds) {
            let _ = child.kill();
            panic!("{args:?} ran past {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A refusal: exit code 2, one line on stderr containing `says`, nothing on stdout.
fn refused(line: &str, says: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = run_within(&args, 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{line}: {stderr}");
    assert!(
        stderr.contains(says),
        "{line} should say {says:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{line}");
}

#[test]
fn calibration_never_reports_an_epsilon_above_its_target() {
    // The PRV bracket's half-width alone would put the upper end above these targets.
    for line in [
        "sigma --sampling-rate 0.5 --steps 100 --delta 1e-6 --epsilon 0.05",
        "sigma --sampling-rate 0.1 --steps 100 --delta 1e-6 --epsilon 0.03",
        "sigma --sampling-rate 0.01 --steps 1000 --delta 1e-5 --epsilon 1 --epsilon-error 0.5",
        "sigma --sampling-rate 0.01 --steps 100 --delta 1e-5 --epsilon 0.0001",
    ] {
        refused(line, "above the target");
    }
    // With the error it suggests, or RDP, the answer meets the target.
    for line in [
        "sigma --sampling-rate 0.5 --steps 100 --delta 1e-6 --epsilon 0.05 --epsilon-error 0.002",
        "sigma --sampling-rate 0.5 --steps 100 --delta 1e-6 --epsilon 0.05 --accountant rdp",
        "steps --sampling-rate 0.01 --noise-multiplier 2 --delta 1e-5 --epsilon 1",
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = json(&args);
        let epsilon = out["epsilon"].as_f64().expect("finite");
        assert!(
            epsilon <= 0.05 || line.starts_with("steps"),
            "{line}: {out}"
        );
        assert!(epsilon <= 1.0, "{line}: {out}");
    }
    // A run that uses a record with probability at most delta needs no noise: refused, at once.
    refused(
        "sigma --sampling-rate 1e-9 --steps 1000 --delta 1e-5 --epsilon 1",
        "no noise to calibrate",
    );
    refused(
        "steps --sampling-rate 0.01 --noise-multiplier 1 --delta 1e-5 --epsilon 1e9",
        "more than 1099511627776 steps fit",
    );
}

#[test]
fn a_delta_below_what_the_prv_resolves_is_answered_by_rdp_and_said() {
    let args = [
        "epsilon",
        "--sampling-rate",
        "0.01",
        "--noise-multiplier",
        "1",
        "--steps",
        "1000",
        "--delta",
        "1e-300",
    ];
    let out = json(&args);
    assert_eq!(out["accountant"], "rdp", "{out}");
    assert!(out["note"].as_str().unwrap().contains("RDP"), "{out}");
    let mut rdp = args.to_vec();
    rdp.extend(["--accountant", "rdp"]);
    assert_eq!(out["epsilon"], json(&rdp)["epsilon"]);
    let text = String::from_utf8_lossy(&run(&args).stdout).to_string();
    assert!(text.contains("note        the PRV accountant resolves delta down to 1e-12"));
    // At the smallest delta it answers, the PRV bracket's lower end stays below RDP's bound.
    let mut at_floor = args.to_vec();
    at_floor[8] = "1e-12";
    let prv = json(&at_floor);
    at_floor.extend(["--accountant", "rdp"]);
    let rdp = json(&at_floor);
    assert_eq!(prv["accountant"], "prv");
    assert!(
        prv["epsilon_lower"].as_f64() <= rdp["epsilon"].as_f64(),
        "{prv} {rdp}"
    );
}

#[test]
fn requests_beyond_memory_or_time_are_refused_up_front_in_one_line() {
    let plan = "--sampling-rate 0.01 --noise-multiplier 1 --delta 1e-5";
    for line in [
        format!("epsilon {plan} --steps 1000 --epsilon-error 1e-12"),
        format!("curve {plan} --steps 1000 --epsilon-error 1e-12"),
        format!("steps {plan} --epsilon 1 --epsilon-error 1e-10"),
        "sigma --sampling-rate 0.01 --steps 1000 --delta 1e-5 --epsilon 1 --epsilon-error 1e-9"
            .into(),
        format!("epsilon {plan} --steps 1000000000000"),
        "epsilon --sampling-rate 1e-9 --noise-multiplier 1 --delta 1e-5 --epochs 1e6".into(),
    ] {
        refused(&line, "beyond the PRV accountant's precision");
    }
    for strategy in ["identity", "sqrt", "banded", "blt"] {
        refused(
            &format!("mf --steps 1000000000000 --strategy {strategy}"),
            "--steps: must be between 1 and 1000000",
        );
    }
}

#[test]
fn messages_name_what_is_wrong_and_outputs_do_not_mix() {
    let plan = "--sampling-rate 0.01 --noise-multiplier 1 --delta 1e-5";
    refused(&format!("curve {plan} --steps 100 --csv - --json"), "--csv");
    refused(
        "epsilon --sampling-rate 0.01 --noise-multiplier 1 --steps 10 --delta -1e-5",
        "--delta: must be in (0, 1), got -0.00001",
    );
    refused(&format!("epsilon {plan}"), "--steps");
    // A delta of at least 1/N is answered with a warning.
    let out = run(&[
        "epsilon",
        "--dataset-size",
        "200",
        "--batch-size",
        "10",
        "--noise-multiplier",
        "1",
        "--steps",
        "10",
        "--delta",
        "0.1",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: delta 1e-1 is at least 1/N"));
    refused("mf --strategy identity", "--steps");
    let huge = u64::MAX.to_string();
    refused(
        &format!("audit --fp 0 --fn 0 --positives {huge} --negatives {huge} --delta 1e-5"),
        "--positives",
    );
    let audit = run(&[
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
        "1e-5",
    ]);
    assert!(String::from_utf8_lossy(&audit.stdout).contains("Clopper-Pearson epsilon >="));
    // An infinite epsilon is the string "inf" in every command, never null.
    let plan = "--sampling-rate 1 --noise-multiplier 1e-200 --steps 10 --delta 1e-5";
    let of = |line: String| json(&line.split_whitespace().collect::<Vec<_>>());
    let epsilon = of(format!("epsilon {plan} --accountant rdp"));
    let tune = of(format!("tune {plan} --runs poisson --mean 3"));
    let curve = of(format!("curve {plan} --accountants rdp"));
    assert_eq!(epsilon["epsilon"], "inf", "{epsilon}");
    assert_eq!(tune["epsilon"], "inf", "{tune}");
    assert_eq!(tune["single_run_epsilon"], "inf", "{tune}");
    assert_eq!(curve["curve"][0]["epsilon_rdp"], "inf", "{curve}");
    // A step with almost no noise puts the PRV's mass past e^709: refused, never NaN.
    refused(
        "epsilon --sampling-rate 1 --noise-multiplier 0.001 --steps 1000 --delta 1e-5",
        "lattice",
    );
    let out = json(&[
        "epsilon",
        "--sampling-rate",
        "1",
        "--noise-multiplier",
        "0.03",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
    ]);
    assert!(out["epsilon_upper"].as_f64().unwrap() > 560_000.0, "{out}");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dp-accounting"))
        .args(["mf", "--steps", "1000", "--strategy", "sqrt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod fuzz {
    //! The command line over generated arguments: each flag gets a typical value or an extreme,
    //! negative, non-finite, huge or malformed one. Every run must end within its deadline with
    //! exit code 0, 1 or 2; an error is one line, no panic or abort; `--json` is valid JSON;
    //! and an accepted calibration reports an epsilon at most its target. The generator is
    //! seeded, so a failure reproduces.
    use super::run_within;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use serde_json::Value;
    use std::cell::Cell;

    /// Values that break parsers and numerics.
    const EXTREME: [&str; 16] = [
        "0",
        "-1",
        "-1e-5",
        "NaN",
        "inf",
        "-inf",
        "1e300",
        "1e-300",
        "5e-324",
        "abc",
        "",
        "1e",
        "18446744073709551616",
        "1000000000000",
        "0x10",
        " 1",
    ];

    /// A flag's typical values (so that most runs get past parsing into the numerics).
    fn typical(flag: &str) -> &'static [&'static str] {
        match flag {
            "--sampling-rate" => &["0.001", "0.01", "0.5", "1"],
            "--noise-multiplier" => &["0.3", "1", "4"],
            "--steps" => &["1", "100", "1000"],
            "--epochs" => &["1", "3"],
            "--delta" => &["1e-5", "1e-9", "1e-13"],
            "--epsilon" => &["0.05", "1", "8"],
            "--epsilon-error" => &["0.01", "0.1"],
            "--points" => &["2", "10"],
            "--mean" => &["1", "5"],
            "--shape" => &["0", "1"],
            "--dataset-size" => &["1000", "60000"],
            "--batch-size" => &["10", "256"],
            "--scales" => &["0.5,1", "1"],
            "--fp" | "--fn" => &["0", "10", "100"],
            "--positives" | "--negatives" => &["100", "1000", "10000000"],
            "--level" => &["0.9", "0.95"],
            "--accountant" => &["rdp", "prv"],
            "--accountants" => &["rdp", "rdp,prv"],
            "--runs" => &["poisson", "truncated-negative-binomial"],
            "--strategy" => &["identity", "sqrt", "nu", "bsr", "bisr", "banded", "blt"],
            "--bands" | "--buffers" => &["1", "4"],
            "--nu" => &["0.5", "0.9"],
            "--workload" => &["prefix", "momentum"],
            "--momentum" => &["0.9"],
            "--objective" => &["mean", "max"],
            _ => &["1"],
        }
    }

    /// Each command with the flags it needs, then the flags it may be given.
    type Flags = (&'static [&'static str], &'static [&'static str]);
    const COMMANDS: [(&str, Flags); 8] = [
        (
            "epsilon",
            (
                &[
                    "--sampling-rate",
                    "--noise-multiplier",
                    "--steps",
                    "--delta",
                ],
                &["--epochs", "--accountant", "--epsilon-error"],
            ),
        ),
        (
            "sigma",
            (
                &["--sampling-rate", "--steps", "--delta", "--epsilon"],
                &[
                    "--dataset-size",
                    "--batch-size",
                    "--epochs",
                    "--accountant",
                    "--epsilon-error",
                ],
            ),
        ),
        (
            "steps",
            (
                &[
                    "--sampling-rate",
                    "--noise-multiplier",
                    "--delta",
                    "--epsilon",
                ],
                &["--accountant", "--epsilon-error"],
            ),
        ),
        (
            "curve",
            (
                &[
                    "--sampling-rate",
                    "--noise-multiplier",
                    "--steps",
                    "--delta",
                ],
                &["--accountants", "--epsilon-error", "--points"],
            ),
        ),
        (
            "tune",
            (
                &[
                    "--sampling-rate",
                    "--noise-multiplier",
                    "--steps",
                    "--delta",
                    "--runs",
                    "--mean",
                ],
                &["--shape"],
            ),
        ),
        (
            "tan",
            (
                &[
                    "--dataset-size",
                    "--batch-size",
                    "--noise-multiplier",
                    "--steps",
                    "--delta",
                ],
                &["--scales"],
            ),
        ),
        (
            "audit",
            (
                &["--fp", "--fn", "--positives", "--negatives", "--delta"],
                &["--level"],
            ),
        ),
        (
            "mf",
            (
                &["--steps", "--strategy"],
                &[
                    "--epochs",
                    "--bands",
                    "--buffers",
                    "--nu",
                    "--workload",
                    "--momentum",
                    "--objective",
                    "--noise-multiplier",
                    "--delta",
                    "--sampling-rate",
                ],
            ),
        ),
    ];

    /// Cases per command.
    const CASES: u32 = 64;

    /// A flag's value: typical seven times in eight, else extreme.
    fn value(flag: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            7 => proptest::sample::select(typical(flag)).prop_map(str::to_string),
            1 => proptest::sample::select(&EXTREME[..]).prop_map(str::to_string),
        ]
    }

    /// Arguments for one command: each needed flag present 19 times in 20, each other flag
    /// once in 4.
    fn arguments((needed, optional): Flags) -> impl Strategy<Value = Vec<(String, String)>> {
        let flag = |flag: &'static str, p: f64| {
            proptest::option::weighted(p, value(flag))
                .prop_map(move |v| v.map(|v| (flag.to_string(), v)))
        };
        needed
            .iter()
            .map(|&f| flag(f, 0.95))
            .chain(optional.iter().map(|&f| flag(f, 0.25)))
            .collect::<Vec<_>>()
            .prop_map(|flags| flags.into_iter().flatten().collect())
    }

    /// Runs one case; true if the command answered (exit code 0).
    fn check(command: &str, flags: &[(String, String)]) -> Result<bool, TestCaseError> {
        let mut args: Vec<&str> = vec![command, "--json"];
        for (flag, value) in flags {
            args.extend([flag.as_str(), value.as_str()]);
        }
        let out = run_within(&args, 30);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        prop_assert!(
            matches!(code, Some(0..=2)),
            "{args:?}: exit {code:?}: {stderr}"
        );
        prop_assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        if code != Some(0) {
            prop_assert_eq!(stderr.lines().count(), 1, "{:?}: {}", args, stderr);
            prop_assert!(stderr.starts_with("dp-accounting: "), "{args:?}: {stderr}");
            return Ok(false);
        }
        let json: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| TestCaseError::fail(format!("{args:?}: not JSON: {e}")))?;
        if command == "sigma" || command == "steps" {
            let target: f64 = flags
                .iter()
                .find(|(f, _)| f == "--epsilon")
                .and_then(|(_, v)| v.parse().ok())
                .expect("accepted with --epsilon");
            let epsilon = json["epsilon"].as_f64().unwrap_or(f64::INFINITY);
            prop_assert!(
                epsilon <= target,
                "{args:?}: epsilon {epsilon} above {target}"
            );
        }
        Ok(true)
    }

    #[test]
    fn every_command_survives_generated_arguments() {
        let mut summary = Vec::new();
        for (command, flags) in COMMANDS {
            let config = Config {
                cases: CASES,
                failure_persistence: None,
                // A failing case is reported as generated: shrinking would rerun slow cases.
                max_shrink_iters: 0,
                ..Config::default()
            };
            let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
            let mut runner = TestRunner::new_with_rng(config, rng);
            let (tried, accepted) = (Cell::new(0u32), Cell::new(0u32));
            let result = runner.run(&arguments(flags), |flags| {
                tried.set(tried.get() + 1);
                if check(command, &flags)? {
                    accepted.set(accepted.get() + 1);
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{command}: {e}");
            }
            summary.push(format!(
                "{command} {} ({} answered)",
                tried.get(),
                accepted.get()
            ));
        }
        eprintln!(
            "cases tried per command (0 panics, aborts or hangs): {}",
            summary.join(", ")
        );
    }
}
