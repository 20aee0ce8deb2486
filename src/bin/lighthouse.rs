//! `lighthouse`: the ops CLI. All the work is in `lighthouse_lease::cli`.

fn main() -> std::process::ExitCode {
    lighthouse_lease::cli::main()
}
