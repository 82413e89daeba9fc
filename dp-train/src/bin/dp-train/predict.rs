//! `dp-train predict`: texts labelled by a run's model.

use std::path::PathBuf;

use dp_accounting::{quiet_print as print, quiet_println as println};
use dp_train::evaluation::{predicted, probabilities};
use dp_train::plan::DeviceChoice;
use dp_train::trained::Examples;
use dp_train::AtPath;
use dp_train::TrainError;

use crate::common::load_trained;

#[derive(clap::Args, Debug)]
pub(crate) struct PredictArgs {
    /// The run folder (its latest checkpoint predicts).
    run_dir: PathBuf,
    /// Texts to label: a .csv file with a `text` column, or any other file with one text per
    /// line [default: stdin, one text per line].
    #[arg(long)]
    input: Option<PathBuf>,
    /// cpu, cuda, or auto.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Write JSON lines ({"text", "label", "probabilities"}) instead of CSV.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: PredictArgs) -> Result<(), TrainError> {
    let (model, _) = load_trained(&args.run_dir, args.device)?;
    if model.pretrained_dir().is_none() {
        return Err(TrainError::Config(
            "predict labels texts; this run is a Fashion-MNIST MLP (score it with dp-train evaluate)".into(),
        ));
    }
    let texts: Vec<String> = match &args.input {
        Some(path)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            dp_train::text::read_texts_csv(path)?
        }
        Some(path) => std::fs::read_to_string(path)
            .at("read", path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => std::io::read_to_string(std::io::stdin())?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    };
    if texts.is_empty() {
        return Err(TrainError::Config("predict: no texts to label".into()));
    }
    let logits = Vec::<Vec<f64>>::try_from(
        model
            .logits(&Examples::Texts(texts.clone()))?
            .to_kind(tch::Kind::Double),
    )?;
    let names = &model.class_names;
    let mut csv = csv::Writer::from_writer(Vec::new());
    if !args.json {
        let mut header = vec!["label".to_string(), "probability".to_string()];
        header.extend(names.iter().map(|n| format!("p_{n}")));
        header.push("text".into());
        csv.write_record(&header).map_err(std::io::Error::other)?;
    }
    for (text, row) in texts.iter().zip(&logits) {
        let p = probabilities(row);
        let label = predicted(row);
        if args.json {
            let by_class: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(&p)
                .map(|(n, p)| (n.clone(), (*p).into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "text": text, "label": names[label], "probabilities": by_class })
            );
        } else {
            let mut record = vec![names[label].clone(), format!("{:.6}", p[label])];
            record.extend(p.iter().map(|x| format!("{x:.6}")));
            record.push(text.clone());
            csv.write_record(&record).map_err(std::io::Error::other)?;
        }
    }
    if !args.json {
        let bytes = csv
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        print!("{}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}
