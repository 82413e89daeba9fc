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

/// Parses the command line of `program`. `--help` and `--version` are printed and end the
/// process with success; a usage error is printed as one line naming the argument (the usage
/// text is one `--help` away) and ends it with exit code 2. `Err` carries that exit code.
pub fn parse<P: clap::Parser>(program: &str) -> Result<P, std::process::ExitCode> {
    P::try_parse().map_err(|e| {
        if e.use_stderr() {
            eprintln!("{program}: {} (see --help)", one_line(&e));
            std::process::ExitCode::from(2)
        } else {
            let _ = e.print();
            std::process::ExitCode::SUCCESS
        }
    })
}
