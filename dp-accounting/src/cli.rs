//! What both command lines (`dp-accounting`, `dp-train`) share about reporting usage errors.

/// A clap error as one line: its first line, with the missing arguments named when that is
/// the error (clap lists them on the lines that follow).
pub fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments").trim_end();
    if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
        return first.to_string();
    }
    let missing: Vec<&str> = lines.map(str::trim).take_while(|l| !l.is_empty()).collect();
    format!("{first} {}", missing.join(", "))
}
