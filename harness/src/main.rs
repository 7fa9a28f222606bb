//! The `lily-e2e` command line. Errors become `anyhow` here, at the edge.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
