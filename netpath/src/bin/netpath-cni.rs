//! The netpath CNI plugin: CNI_* environment and network configuration on
//! stdin in, the spec's result or error JSON on stdout.

use std::io::Read;

fn main() -> std::process::ExitCode {
    // stdout is the runtime's; logs go to stderr, quietly by default.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(netpath::observe::DEFAULT_CNI_LOG_FILTER),
    )
    .init();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (output, code) =
        runtime.block_on(netpath::ops::cni::run(|k| std::env::var(k).ok(), &stdin));
    if !output.is_null() {
        println!("{output}");
    }
    std::process::ExitCode::from(code as u8)
}
