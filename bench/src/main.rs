//! `tessera-bench`: see the library documentation (`bench/src/lib.rs`).

fn main() -> std::process::ExitCode {
    tessera_bench::main()
}
