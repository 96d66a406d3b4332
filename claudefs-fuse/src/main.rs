fn main() -> std::process::ExitCode {
    claudefs_fuse::cli::main()
}
