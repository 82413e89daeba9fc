//! What both command lines (`dp-accounting`, `dp-train`) share: usage errors in one line, and
//! output that ends quietly on a closed pipe (`dp-train report runs/x | head -1`), as Unix tools
//! do, instead of panicking in `println!`. Each binary imports the two macros under the
//! standard names: `use dp_accounting::{quiet_print as print, quiet_println as println};`.

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

/// Writes to standard output. A closed pipe ends the process quietly with success; any other
/// write error ends it with one line naming the program, and exit code 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let program = std::env::args()
            .next()
            .and_then(|p| {
                std::path::Path::new(&p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        eprintln!("{program}: error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `print!` that ends quietly on a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! quiet_print {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that ends quietly on a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! quiet_println {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
