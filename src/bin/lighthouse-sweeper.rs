//! `lighthouse-sweeper`: the sidecar that reclaims expired leases. All the work is
//! in `lighthouse_lease::sweeper`.

fn main() -> std::process::ExitCode {
    lighthouse_lease::sweeper::cli::main()
}
