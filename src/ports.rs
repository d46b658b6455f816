//! Whether the addresses a start asks for can be listened on, checked
//! before anything is made or an enrollment string spent.

/// Whether each of `addrs` can be listened on, each named by its setting:
/// bound a moment, together (so two settings that clash are found too),
/// and let go, so a start that could not listen ends before anything is
/// made or an enrollment string spent. A check may run beside the process
/// it checks: a port in use is no mistake then, an address this host does
/// not have is.
pub fn usable_addrs(addrs: &[(std::net::SocketAddr, &str)], check: bool) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for &(addr, var) in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => held.push(l),
            Err(e) if check && e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("{var}: {addr} cannot be listened on"))
                );
            }
        }
    }
    Ok(())
}

/// [`usable_addrs`] for a Shadowsocks node's address, which takes UDP on
/// the same port as TCP.
pub fn usable_node_addr(addr: std::net::SocketAddr, var: &str, check: bool) -> anyhow::Result<()> {
    usable_addrs(&[(addr, var)], check)?;
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if check && e.kind() == std::io::ErrorKind::AddrInUse => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "{var}: {addr} cannot take UDP (the node's UDP relay shares the TCP port)"
        ))),
    }
}
