//! `dp-train tune`: private hyperparameter search over a plan.

use std::path::PathBuf;

use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_train::plan::TrainConfig;
use dp_train::tune::{self, Disclosure, TuneConfig};
use dp_train::AtPath;
use dp_train::TrainError;

use crate::common::write_file;

#[derive(clap::Args, Debug)]
pub(crate) struct TuneArgs {
    /// TOML file naming the plan searched (`plan = "..."`, relative to this file) with
    /// [tuning] and [search] (plan keys and their values) sections.
    #[arg(long)]
    config: PathBuf,
    /// Override [tuning] tan_scale (search at k B and k sigma, then one full-scale run); 1 turns
    /// TAN mode off.
    #[arg(long, allow_hyphen_values = true)]
    tan_scale: Option<f64>,
    /// Seed the privacy generator (the number of runs, the draws, the noise): reproducible,
    /// not private. Without it, the operating system seeds it.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder with the plan's dataset [default: its folder under $DP_ASSETS].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Release every run (their hyperparameters, scores and number) instead of the chosen one
    /// alone: the search is then accounted as that many runs composed, which costs more
    /// epsilon than the random-count bound.
    #[arg(long)]
    show_trials: bool,
    /// Save the released model (model.safetensors, with the plan it was trained with in
    /// config.resolved.toml), the privacy report and tune.json here.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: TuneArgs) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", args.config.display())))?;
    let mut config = TuneConfig::from_toml(&text)?;
    if let Some(k) = args.tan_scale {
        config.tuning.tan_scale = (k != 1.0).then_some(k);
    }
    let plan_path = config.plan_path(&args.config);
    let plan_text = std::fs::read_to_string(&plan_path)
        .map_err(|e| TrainError::Config(format!("plan {}: {e}", plan_path.display())))?;
    let plan = TrainConfig::from_toml(&plan_text, &config.set)?;
    let device = plan.performance.device.device()?;
    if plan.performance.threads > 0 {
        tch::set_num_threads(plan.performance.threads);
    }
    let seed = args.seed.or(plan.privacy.seed);
    let mut rng = dp_train::run_generator(seed);
    let disclosure = if args.show_trials {
        Disclosure::AllTrials
    } else {
        Disclosure::ChosenOnly
    };
    let place = tune::Workspace {
        plan: &plan_text,
        device,
        data_dir: args.data_dir.as_deref(),
    };
    let result = tune::tune(place, &config, disclosure, &mut rng, |t| {
        if !args.json {
            eprintln!(
                "  run: {}  selection score {:.2}%  ({:.1} s)",
                t.describe(),
                100.0 * t.selection_score.unwrap_or(f64::NAN),
                t.seconds
            );
        }
    })?;
    let up = |x: f64| {
        if x.is_finite() {
            format!("{:.3}", (x * 1000.0).ceil() / 1000.0)
        } else {
            "infinite".into()
        }
    };
    let mut report = String::new();
    {
        use std::fmt::Write as _;
        let w = &mut report;
        let _ = match disclosure {
            Disclosure::ChosenOnly => writeln!(w, "Released: the best of a random number of private runs (mean {}; how many ran is not released), each at batch {} and noise multiplier {:.4}, {} steps", config.tuning.mean_runs, result.search_batch_size, result.search_noise_multiplier, result.steps),
            Disclosure::AllTrials => writeln!(w, "Released: all {} runs (--show-trials), each at batch {} and noise multiplier {:.4}, {} steps", result.trials.as_ref().map_or(0, Vec::len), result.search_batch_size, result.search_noise_multiplier, result.steps),
        };
        for t in result.trials.iter().flatten() {
            let _ = writeln!(
                w,
                "  run: {}: selection score {:.2}%, test accuracy {:.2}%",
                t.describe(),
                100.0 * t.selection_score.unwrap_or(f64::NAN),
                100.0 * t.test_accuracy
            );
        }
        let _ = match &result.chosen {
            None => writeln!(w, "No run was drawn: nothing is released."),
            Some(best) => writeln!(
                w,
                "Chosen: {}: selection score {:.2}%, test accuracy {:.2}%",
                best.describe(),
                100.0 * best.selection_score.unwrap_or(f64::NAN),
                100.0 * best.test_accuracy
            ),
        };
        if let (Some(f), Some(eps)) = (&result.final_run, result.final_run_epsilon) {
            let _ = writeln!(
                w,
                "Final full-scale run (TAN), released: test accuracy {:.2}%, epsilon {} (RDP)",
                100.0 * f.test_accuracy,
                up(eps)
            );
        }
        let _ = writeln!(
            w,
            "Privacy (delta {:e}, add/remove one example, RDP):",
            plan.privacy.delta
        );
        let _ = match result.selection {
            tune::Selection::NoisyCount { noise_multiplier } => writeln!(w, "  selection    a count of correct predictions on {} private validation examples plus exact discrete Gaussian noise of standard deviation {noise_multiplier}, accounted in every run with sensitivity 2 (the split is by position)", config.tuning.validation_size),
            tune::Selection::Public => writeln!(w, "  selection    accuracy on {} validation examples the plan declares PUBLIC: they are not protected by this guarantee", config.tuning.validation_size),
        };
        let _ = writeln!(
            w,
            "  one search run       epsilon {} (its training and its selection score)",
            up(result.single_run_epsilon)
        );
        let _ = match disclosure {
            Disclosure::ChosenOnly => writeln!(w, "  the whole search     epsilon {} (Papernot-Steinke bound for a random number of runs, only the chosen one released)", up(result.tuning_epsilon)),
            Disclosure::AllTrials => writeln!(w, "  the whole search     epsilon {} (every run released: the runs composed)", up(result.tuning_epsilon)),
        };
        let _ = writeln!(
            w,
            "  total released       epsilon {}   epsilon rounded up",
            up(result.total_epsilon)
        );
        if let Some(seed) = seed {
            let _ = writeln!(w, "  randomness   seeded with {seed}: reproducible, so anyone who knows the seed can remove the noise");
        }
    }
    if let Some(run_dir) = &args.run_dir {
        std::fs::create_dir_all(run_dir).at("create the run folder", run_dir)?;
        if let Some(model) = &result.model {
            let path = run_dir.join("model.safetensors");
            tch::Tensor::write_safetensors(&model.weights, &path).at("write", &path)?;
            write_file(
                &run_dir.join("config.resolved.toml"),
                model.plan.to_toml()?.as_bytes(),
            )?;
        }
        write_file(&run_dir.join("privacy_report.txt"), report.as_bytes())?;
        write_file(
            &run_dir.join("tune.json"),
            serde_json::json!({ "config": config, "result": result })
                .to_string()
                .as_bytes(),
        )?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "config": config, "result": result })
        );
    } else {
        print!("{report}");
    }
    Ok(())
}
