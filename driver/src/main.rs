//! The `kp-torrent` command.

fn main() {
    eprintln!("kp-torrent: no command yet");
    std::process::exit(2);
}
