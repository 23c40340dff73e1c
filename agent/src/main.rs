fn main() {
    std::process::exit(vitalgate::cli::main());
}
