#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = rlu2net::cli::Cli::parse();
    if let Err(e) = rlu2net::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
