//! The `sallyport` binary: the command line ([`cli`]) and the assembly of a running broker
//! ([`assembly`]), with the pieces only the binary needs: `init` ([`init`]), break-glass grants
//! ([`breakglass`]) and the demo target ([`demo`]). Everything a broker does lives in the library
//! crates: `gateway` (data plane), `api`, `workflow`, `notify`, `audit`, `store`, `config`,
//! `policy`, `certs`, `metrics`, `ids`; the client side of every command (API calls, tunnels, the
//! technician's forwarders and SOCKS5) lives in `client`.

mod assembly;
mod breakglass;
mod cli;
mod demo;
mod init;

fn main() -> std::process::ExitCode {
    cli::main()
}
