//! `dp-train audit`: empirical privacy audits (canaries, attacks, lower bounds on epsilon).

use std::path::PathBuf;

use dp_accounting::audit::posterior_cdf;
use dp_accounting::plot::{line_chart, Frame, Marker, Series, XAxis};
use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_train::audit::{self, AuditConfig, CanaryKind, Sabotage};
use dp_train::audit_plan::{audit_plan, PlanAuditConfig};
use dp_train::data::assets_dir;
use dp_train::fashion_mnist::FashionMnist;
use dp_train::job::Job;
use dp_train::plan::TrainConfig;
use dp_train::AtPath;
use dp_train::TrainError;
use indicatif::{ProgressBar, ProgressStyle};

use crate::common::write_file;

#[derive(clap::Args, Debug)]
pub(crate) struct AuditArgs {
    /// Audit this TOML plan as `dp-train train` runs it (its data, model, sampling, clipping,
    /// noise and optimizer, the MiniLM encoder included) instead of the built-in Fashion-MNIST
    /// run; the canary is one more row, given an inserted gradient (gradient) or a wrong label
    /// (input). The flags below that describe the built-in run do not apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: override a plan value, section.key=value (repeatable).
    #[arg(long = "set", requires = "config")]
    set: Vec<String>,
    /// gradient: an example whose gradient owns one column of the first layer, trained and
    /// clipped like any example, scored on every noisy update against its clipped gradient
    /// (white-box, strong; with --config: a gradient of norm 100 C inserted on the trained
    /// coordinate the real examples touch least whenever the run samples the canary's row,
    /// cut to the run's clip norm); input: a mislabelled example scored by its final loss
    /// (black-box, weak).
    #[arg(long, value_enum, default_value_t = CanaryKind::Gradient)]
    canary: CanaryKind,
    /// Training runs, each with or without the canary (a fair coin each); 20% fix the
    /// attack's threshold, the rest are counted.
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Instead of trials: one run with this many gradient canaries, each included with
    /// probability 1/2 (Steinke, Nasr, Jagielski 2023).
    #[arg(long, conflicts_with = "config")]
    one_run_canaries: Option<u64>,
    /// Guesses in the one-run audit (half on the highest scores, half on the lowest).
    #[arg(long, default_value_t = 100)]
    guesses: u64,
    /// Claimed epsilon: the noise is calibrated to it.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 2.0,
        conflicts_with = "config"
    )]
    epsilon: f64,
    /// Claimed delta.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 1e-5,
        conflicts_with = "config"
    )]
    delta: f64,
    /// Steps of each training run.
    #[arg(long, default_value_t = 100, conflicts_with = "config")]
    steps: u64,
    /// Training images used (the first N).
    #[arg(long, default_value_t = 1000, conflicts_with = "config")]
    dataset_size: usize,
    /// Expected batch size.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_value_t = 50.0,
        conflicts_with = "config"
    )]
    batch_size: f64,
    /// Credible / confidence level of the bounds.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.95)]
    level: f64,
    /// Plant a bug: none, no-noise, no-clipping (clip at 1000 C), unclipped-layer (the
    /// clipping engine leaves the first layer, the gradient canaries' layer, unclipped).
    #[arg(long, value_enum, default_value_t = Sabotage::None)]
    sabotage: Sabotage,
    /// Seed of the experiment.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for report.txt, audit.json and posterior.svg.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder with the Fashion-MNIST IDX files [default: $DP_ASSETS/fashion-mnist].
    #[arg(long, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: AuditArgs) -> Result<(), TrainError> {
    let sabotage = args.sabotage;
    let config = AuditConfig {
        epsilon: args.epsilon,
        delta: args.delta,
        dataset_size: args.dataset_size,
        expected_batch_size: args.batch_size,
        steps: args.steps,
        level: args.level,
        sabotage,
        seed: args.seed,
        ..AuditConfig::default()
    };
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| assets_dir().join("fashion-mnist"));
    let start = std::time::Instant::now();
    let broken = if sabotage == Sabotage::None {
        String::new()
    } else {
        format!(" (SABOTAGED: {}, NOT PRIVATE)", args.sabotage)
    };
    let canary = args.canary;
    let (report, json, plot) = if let Some(plan) = &args.config {
        let (report, json, plot) = audit_plan_report(&args, plan, sabotage, canary, &broken)?;
        (report, json, Some(plot))
    } else if let Some(m) = args.one_run_canaries {
        let data = FashionMnist::load(&dir)?;
        let r = audit::audit_one_run(&data, &config, m, args.guesses)?;
        let verdict = if r.claim_refuted {
            "REFUTED: the lower bound exceeds the claim"
        } else {
            "consistent: the lower bound is below the claim"
        };
        let report = format!(
            "One-run audit{broken}: {} gradient canaries, {} guesses, {} correct\n  epsilon >= {:.3} at {}% confidence (Steinke, Nasr, Jagielski 2023)\n  claimed epsilon {} (noise multiplier {:.4}, delta {:e}): {verdict}\n",
            r.canaries, r.guesses, r.correct, (r.epsilon_lower_bound * 1000.0).floor() / 1000.0, 100.0 * config.level, config.epsilon, r.noise_multiplier, config.delta
        );
        (
            report,
            serde_json::json!({ "config": config, "one_run": r }),
            None,
        )
    } else {
        let data = FashionMnist::load(&dir)?;
        audit::check_trials(args.trials)?;
        let bar = if args.json {
            ProgressBar::hidden()
        } else {
            eprintln!(
                "Auditing epsilon {}: {} training runs x {} steps = {} steps ({} examples, batch {}); 200 runs of the default plan take about 2 minutes on 2 cores",
                config.epsilon,
                args.trials,
                config.steps,
                args.trials as u64 * config.steps,
                config.dataset_size,
                config.expected_batch_size
            );
            ProgressBar::new(args.trials as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} trials  [{elapsed} < {eta}]")
                .expect("static template"),
        );
        let r = audit::audit_trials(&data, &config, canary, args.trials, |k| {
            bar.set_position(k as u64)
        })?;
        bar.finish_and_clear();
        let (report, plot) = trials_report(&r, config.epsilon, config.delta, config.level, &broken);
        (
            report,
            serde_json::json!({ "config": config, "audit": r }),
            Some(plot),
        )
    };
    let seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).at("create", out)?;
        write_file(&out.join("report.txt"), report.as_bytes())?;
        write_file(&out.join("audit.json"), json.to_string().as_bytes())?;
        if let Some(svg) = &plot {
            write_file(&out.join("posterior.svg"), svg.as_bytes())?;
        }
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{report}");
        println!(
            "  wall time {seconds:.1} s{}",
            args.out
                .as_ref()
                .map(|o| format!("; written to {}", o.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Audits the plan at `path` (see `dp_train::audit_plan`): its report, JSON and posterior plot.
pub(crate) fn audit_plan_report(
    args: &AuditArgs,
    path: &std::path::Path,
    sabotage: Sabotage,
    canary: CanaryKind,
    broken: &str,
) -> Result<(String, serde_json::Value, String), TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", path.display())))?;
    let config = TrainConfig::from_toml(&text, &args.set)?;
    let plan = config.resolve()?;
    audit::check_trials(args.trials)?;
    let device = config.performance.device.device()?;
    if config.performance.threads > 0 {
        tch::set_num_threads(config.performance.threads);
    }
    let job = Job::load(&config, device, None, |_, _| {})?;
    let audit = PlanAuditConfig {
        canary,
        trials: args.trials,
        level: args.level,
        sabotage,
        seed: args.seed,
    };
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        eprintln!(
            "Auditing the plan {} ({}): {} training runs x {} steps = {} steps of {} examples (q = {:.6}, noise multiplier {:.4}); each run costs what `dp-train train` of this plan costs, the bar's estimate follows the first runs",
            path.display(),
            job.description,
            args.trials,
            plan.steps,
            args.trials as u64 * plan.steps,
            config.data.dataset_size,
            plan.sampling_rate,
            plan.noise_multiplier
        );
        ProgressBar::new(args.trials as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} trials  [{elapsed} < {eta}]")
            .expect("static template"),
    );
    let r = audit_plan(&job, &config, &audit, |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    let (report, plot) = trials_report(
        &r.audit,
        r.claimed_epsilon,
        config.privacy.delta,
        args.level,
        broken,
    );
    let report = format!("Plan {} ({})\n{report}", path.display(), job.description);
    let json = serde_json::json!({ "plan": config, "audit_config": audit, "claimed_epsilon": r.claimed_epsilon, "audit": r.audit });
    Ok((report, json, plot))
}

/// The report of a K-trial audit of a claim (`epsilon`, `delta`), and the posterior's plot.
pub(crate) fn trials_report(
    r: &dp_train::audit::TrialAudit,
    epsilon: f64,
    delta: f64,
    level: f64,
    broken: &str,
) -> (String, String) {
    let e = &r.estimate;
    let verdict = if r.claim_refuted {
        "REFUTED: the Bayesian lower bound exceeds the claim"
    } else {
        "consistent: the lower bounds are below the claim"
    };
    let report = format!(
        "Audit{broken}: {}, {} trials ({} counted: {} with, {} without); FP {}, FN {}\n  Bayesian         P[epsilon >= {:.3}] = {}%; credible interval [{:.3}, {:.3}]\n  Clopper-Pearson  epsilon >= {:.3}\n  claimed epsilon {} (noise multiplier {:.4}, delta {:e}): {verdict}\n",
        r.canary, r.trials, e.counts.positives + e.counts.negatives, e.counts.positives, e.counts.negatives,
        e.counts.false_positives, e.counts.false_negatives,
        (e.bayes.eps_lo_one_sided * 1000.0).floor() / 1000.0, 100.0 * level,
        (e.bayes.eps_lo_two_sided * 1000.0).floor() / 1000.0, (e.bayes.eps_hi_two_sided * 1000.0).ceil() / 1000.0,
        (e.clopper_pearson.eps_lo_one_sided * 1000.0).floor() / 1000.0,
        dp_accounting::round_up(epsilon, 3), r.noise_multiplier, delta
    );
    let xs: Vec<f64> = (0..=120)
        .map(|i| i as f64 * (2.0 * epsilon).max(8.0) / 120.0)
        .collect();
    let cdf = posterior_cdf(e.counts, delta, &xs);
    let series = [Series {
        name: "posterior P[epsilon <= x]",
        points: xs.iter().copied().zip(cdf).collect(),
    }];
    let markers = [Marker::AtX {
        x: epsilon,
        label: "claimed epsilon",
    }];
    let frame = Frame {
        title: "Audit: posterior of epsilon",
        x_label: "epsilon",
        y_label: "P[epsilon <= x]",
        x_axis: XAxis::Linear,
    };
    (report, line_chart(&frame, &series, &markers))
}
