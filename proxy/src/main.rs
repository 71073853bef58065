//! The `sallyport` binary: the command line ([`cli`]) and the assembly of a running broker
//! ([`assembly`]), with the pieces only the binary needs: `init` ([`init`]), break-glass grants
//! ([`breakglass`]), the technician's local forwarder, SOCKS5 server and broker client
//! ([`forwarder`], [`socks`], [`client`]),
//! and the demo target ([`demo`]). Everything a broker does lives in the library crates: `gateway`
//! (data plane), `api`, `workflow`, `notify`, `audit`, `store`, `config`, `policy`, `certs`, `ids`.

mod assembly;
mod breakglass;
mod cli;
mod client;
mod demo;
mod forwarder;
mod init;
mod socks;

fn main() -> std::process::ExitCode {
    cli::main()
}
