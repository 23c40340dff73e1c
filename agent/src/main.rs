fn main() -> std::process::ExitCode {
    vitalgate::cli::main()
}
