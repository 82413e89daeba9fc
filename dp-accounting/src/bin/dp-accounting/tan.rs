//! `dp-accounting tan`: configurations with the same total amount of noise (Sander et al. 2023).

use clap::Args;
use dp_accounting::quiet_println as println;
use dp_accounting::{tan_table, FractionalSeries};
use serde_json::{json, Value};

use crate::common::{
    batch_fraction, check_delta, finite_positive, number, shown, usage, warn_delta, Failure,
};

#[derive(Args, Debug)]
pub(crate) struct TanArgs {
    /// Records in the dataset N.
    #[arg(long)]
    dataset_size: u64,
    /// Expected batch size B of the reference run.
    #[arg(long, allow_hyphen_values = true)]
    batch_size: f64,
    /// Noise multiplier of the reference run.
    #[arg(long, allow_hyphen_values = true)]
    noise_multiplier: f64,
    /// Steps S (the same in every row).
    #[arg(long)]
    steps: u64,
    /// Target delta.
    #[arg(long, allow_hyphen_values = true)]
    delta: f64,
    /// Scales k: each row runs batch k B with noise k sigma.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.0625,0.25,1,4",
        allow_hyphen_values = true
    )]
    scales: Vec<f64>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

impl TanArgs {
    pub(crate) fn run(self) -> Result<(), Failure> {
        let Self {
            dataset_size,
            batch_size,
            noise_multiplier,
            steps,
            delta,
            scales,
            json: as_json,
        } = self;
        batch_fraction(dataset_size, batch_size)?;
        let b = batch_size;
        let sigma = finite_positive("noise-multiplier", noise_multiplier)?;
        if steps == 0 {
            return Err(usage("steps", "must be at least 1"));
        }
        check_delta(delta)?;
        warn_delta(delta, dataset_size);
        for &k in &scales {
            if !(k.is_finite() && k > 0.0 && k * b <= dataset_size as f64) {
                return Err(usage(
                    "scales",
                    format!("scale {k} must be > 0 with k * batch size <= dataset size"),
                ));
            }
        }
        let table = tan_table(
            dataset_size,
            b,
            sigma,
            steps,
            delta,
            &scales,
            FractionalSeries::Signed,
        )?;
        if as_json {
            let rows: Vec<Value> = table
                .rows
                .iter()
                .map(|r| {
                    let mut row = serde_json::to_value(r).unwrap_or(Value::Null);
                    row["epsilon"] = number(r.epsilon);
                    row
                })
                .collect();
            let out = json!({
                "dataset_size": dataset_size, "steps": steps, "delta": delta,
                "eta": table.eta, "tan_limit_epsilon": number(table.tan_limit_epsilon), "rows": rows,
            });
            println!("{out}");
        } else {
            println!("TAN eta = sigma / (q sqrt(S)) = {:.4}; effective noise sigma/B = {:.3e}; epsilon tends to {} as k grows (delta {delta:e}, {steps} steps)",
                table.eta, sigma / b, shown(table.tan_limit_epsilon));
            println!(
                "{:>8} {:>10} {:>10} {:>12} {:>10}  note",
                "scale", "batch", "sigma", "q", "epsilon"
            );
            for r in &table.rows {
                let note = if r.equivalence_holds {
                    ""
                } else {
                    "sigma < 2: far less private than TAN suggests"
                };
                println!(
                    "{:>8} {:>10} {:>10.4} {:>12.6} {:>10}  {note}",
                    r.scale,
                    r.batch_size,
                    r.noise_multiplier,
                    r.sampling_rate,
                    shown(r.epsilon)
                );
            }
            println!("Scaled-down runs simulate the reference's training at lower cost; their own epsilon is the one shown, and tuning on private data needs its own bound (see `dp-accounting tune`).");
        }
        Ok(())
    }
}
