//! The `sallyport` binary: parse the command line and hand over to [`sallyport_proxy::cli`].

fn main() -> std::process::ExitCode {
    sallyport_proxy::cli::main()
}
