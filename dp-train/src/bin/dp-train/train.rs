//! `dp-train train`: a plan trained into a run folder (resumable), with its privacy report.

use std::path::PathBuf;

use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_core::collectives::WORLD_SIZE_VAR;
use dp_core::Collectives;
use dp_train::checkpoint::Checkpointing;
use dp_train::job::Job;
use dp_train::plan::{ResolvedPlan, TrainConfig};
use dp_train::TrainError;
use dp_train::{evaluate_accuracy, serve_as_worker, train_data_parallel, AtPath, PrivacyStatement};
use indicatif::{ProgressBar, ProgressStyle};

use crate::common::{step_bar, write_file};
use crate::launch;

#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    /// TOML plan with [data], [privacy], [training] and optional [performance] sections.
    #[arg(long)]
    config: PathBuf,
    /// Override a value: section.key=value (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The run folder (created; resumed if it holds a checkpoint).
    #[arg(long)]
    run_dir: PathBuf,
    /// The dataset's folder [default: $DP_ASSETS/fashion-mnist or $DP_ASSETS/rotten-tomatoes].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
    /// Train data-parallel over this many processes on this machine (c10d/Gloo on the
    /// loopback): the same mechanism, ledger and run folder as one process, the clipping
    /// shared. Several machines: start this command on each with RANK, WORLD_SIZE,
    /// MASTER_ADDR and MASTER_PORT set (as torchrun sets them) instead; see docs/distributed.md.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
}

pub(crate) fn run(args: TrainArgs) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| TrainError::Config(format!("--config {}: {e}", args.config.display())))?;
    let config = TrainConfig::from_toml(&text, &args.set)?;
    let plan = config.resolve()?;
    let launched = std::env::var_os(WORLD_SIZE_VAR).is_some();
    let device = place(&config, launched)?;
    if args.workers > 1 && !launched {
        return launch::run_local(usize::from(args.workers));
    }
    let collectives = Collectives::from_env()?;
    if launched && args.workers > 1 && collectives.world_size() != usize::from(args.workers) {
        return Err(TrainError::Distributed(format!(
            "--workers {} but the launcher's {WORLD_SIZE_VAR} is {}",
            args.workers,
            collectives.world_size()
        )));
    }
    share_cores(&config);
    if !collectives.is_leader() {
        let job = Job::load(&config, device, args.data_dir.as_deref(), |_, _| {})?;
        let logits = |x: &tch::Tensor, tape: &mut dp_core::Tape| job.model.logits(x, tape);
        serve_as_worker(
            &collectives,
            &job.vs,
            logits,
            job.train_data(),
            &config.dp_sgd_config(&plan),
        )?;
        return Ok(());
    }
    lead(&args, &config, &plan, device, &collectives)
}

/// The device this process trains on.
fn place(config: &TrainConfig, launched: bool) -> Result<tch::Device, TrainError> {
    Ok(match config.performance.device.device()? {
        // Processes of one machine take its GPUs in turn, as torchrun's LOCAL_RANK says.
        tch::Device::Cuda(0) if launched => tch::Device::Cuda(
            std::env::var(launch::LOCAL_RANK_VAR)
                .ok()
                .and_then(|r| r.parse::<usize>().ok())
                .unwrap_or(0)
                % tch::Cuda::device_count().max(1) as usize,
        ),
        device => device,
    })
}

/// libtorch's threads: the plan's, or this machine's cores shared among its processes.
fn share_cores(config: &TrainConfig) {
    if config.performance.threads > 0 {
        tch::set_num_threads(config.performance.threads);
    } else if let Some(local) = std::env::var(launch::LOCAL_WORLD_SIZE_VAR)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&local| local > 1)
    {
        // Processes sharing a machine share its cores.
        tch::set_num_threads((tch::get_num_threads() / local).max(1));
    }
}

/// The plan as `config.resolved.toml` records it, with the numbers it resolved to.
fn resolved_toml(config: &TrainConfig, plan: &ResolvedPlan) -> Result<String, TrainError> {
    Ok(format!(
        "{}\n# Resolved from [data] and [privacy] only.\n[resolved]\nsampling_rate = {}\nsteps = {}\nnoise_multiplier = {}\nepsilon_budget = {}\n",
        config.to_toml()?,
        plan.sampling_rate,
        plan.steps,
        plan.noise_multiplier,
        if plan.epsilon_budget.is_finite() { plan.epsilon_budget.to_string() } else { "inf".into() }
    ))
}

/// Loads the job, with a progress bar over the frozen layers' pass unless `quiet`.
fn load_job(
    config: &TrainConfig,
    device: tch::Device,
    data_dir: Option<&std::path::Path>,
    quiet: bool,
) -> Result<Job, TrainError> {
    let cache_bar = ProgressBar::hidden();
    let job = Job::load(config, device, data_dir, |done, total| {
        if cache_bar.is_hidden() && !quiet {
            cache_bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            cache_bar.set_length(total as u64);
            cache_bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} examples through the frozen layers  [{elapsed} < {eta}]",
                )
                .expect("static template"),
            );
        }
        cache_bar.set_position(done as u64);
    })?;
    cache_bar.finish_and_clear();
    Ok(job)
}

/// The run of rank 0 (or of the only process): the run folder, the training with its
/// progress bar and metrics, and the privacy report.
fn lead(
    args: &TrainArgs,
    config: &TrainConfig,
    plan: &ResolvedPlan,
    device: tch::Device,
    collectives: &Collectives,
) -> Result<(), TrainError> {
    let mut rng = dp_train::run_generator(config.privacy.seed);
    let resolved = resolved_toml(config, plan)?;
    let checkpointing = Checkpointing {
        dir: args.run_dir.clone(),
        every: config.performance.checkpoint_every,
        resolved_config: Some(resolved.clone()),
    };
    // A folder holding another plan's checkpoint is refused before anything is loaded or written.
    checkpointing.check_resumed_plan(&resolved)?;
    let job = load_job(config, device, args.data_dir.as_deref(), args.json)?;
    let n = config.data.dataset_size;
    let run_dir = &args.run_dir;
    std::fs::create_dir_all(run_dir).at("create the run folder", run_dir)?;
    write_file(&run_dir.join("config.resolved.toml"), resolved.as_bytes())?;
    let dp = config.dp_sgd_config(plan);
    let (trainable, total) = job.parameter_counts();
    if !args.json {
        println!(
            "{}: {trainable} of {total} parameters trained on {n} examples, {} steps, noise multiplier {:.4}, on {}{}",
            job.description, plan.steps, plan.noise_multiplier, dp_train::device_name(device), parallel_note(collectives)
        );
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .at("open", &metrics_path)?;
    let bar = step_bar(plan.steps, args.json);
    let private = plan.noise_multiplier > 0.0;
    let started = std::time::Instant::now();
    let mut write_error = None;
    let logits = |x: &tch::Tensor, tape: &mut dp_core::Tape| job.model.logits(x, tape);
    let steps_per_epoch = ((1.0 / plan.sampling_rate).round() as u64).max(1);
    let mut last_test = String::new();
    let summary = train_data_parallel(
        collectives,
        &job.vs,
        logits,
        job.train_data(),
        &dp,
        &mut rng,
        Some(&checkpointing),
        |step| {
            use std::io::Write as _;
            let mut line = serde_json::to_value(step).unwrap_or_default();
            // At the end of each epoch: accuracy on the public test split.
            if step.step % steps_per_epoch == 0 {
                let accuracy = evaluate_accuracy(logits, job.test_data(), 256);
                line["test_accuracy"] = serde_json::json!(accuracy);
                last_test = format!("  test acc {accuracy:.3}");
            }
            if let Err(e) = writeln!(metrics, "{line}") {
                write_error = Some(e);
            }
            bar.set_position(step.step);
            let samples = step.step as f64 * dp.expected_batch_size
                / started.elapsed().as_secs_f64().max(1e-9);
            let eps = if private {
                format!("{:.3}", step.epsilon)
            } else {
                "NOT PRIVATE".into()
            };
            bar.set_message(format!(
                "loss {:.3}  acc {:.3}{last_test}  epsilon {eps}  {samples:.0} samples/s",
                step.mean_loss, step.accuracy
            ));
        },
    )?;
    bar.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let test_accuracy = evaluate_accuracy(logits, job.test_data(), 256);
    {
        use std::io::Write as _;
        let last = serde_json::json!({ "test_accuracy": test_accuracy, "after_step": summary.ledger.steps() });
        writeln!(metrics, "{last}").at("write", &metrics_path)?;
    }
    let statement = PrivacyStatement::from_ledger(
        &summary.ledger,
        n,
        config.privacy.clip_norm,
        config.privacy.seed,
    )?;
    let mut header = if private {
        String::new()
    } else {
        "NOT PRIVATE: no noise was added.\n".to_string()
    };
    if summary.stopped_by_budget {
        header.push_str(&format!(
            "Stopped after {} of {} steps: the next step would have exceeded the budget epsilon {}.\n",
            summary.ledger.steps(),
            plan.steps,
            plan.epsilon_budget
        ));
    }
    let report = format!(
        "{header}{}: test accuracy {:.2}% after {} steps ({train_seconds:.0} s of training{})\n{statement}{}",
        job.description,
        100.0 * test_accuracy,
        statement.steps,
        parallel_note(collectives),
        SECRETS_NOTE
    );
    write_file(&run_dir.join("privacy_report.txt"), report.as_bytes())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "test_accuracy": test_accuracy, "privacy": statement, "private": private, "stopped_by_budget": summary.stopped_by_budget, "train_seconds": train_seconds, "trainable_parameters": trainable, "run_dir": run_dir })
        );
    } else {
        print!("{report}");
        println!(
            "Run folder: {} (dp-train report {} draws the curves)",
            run_dir.display(),
            run_dir.display()
        );
    }
    Ok(())
}

/// How the clipping was shared, when it was: the mechanism is one process's either way (rank 0
/// alone draws the batch and the noise and keeps the ledger).
fn parallel_note(collectives: &Collectives) -> String {
    match collectives.world_size() {
        1 => String::new(),
        w => format!(
            ", data-parallel over {w} processes: batches, noise and ledger drawn and kept once, by rank 0"
        ),
    }
}

/// What a run folder holds that must not be shared, printed with every training report.
const SECRETS_NOTE: &str = "  secrets       checkpoints/step-*/generator.json (and noise.safetensors for correlated noise) hold the privacy generator's state, readable by you only (mode 0600): whoever reads them can remove the noise. Share what `dp-train export` writes (the model, its card and statement), not the run folder.\n";
