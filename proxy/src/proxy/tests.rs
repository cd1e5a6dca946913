use super::*;

#[test]
fn an_explicit_inbound_to_the_admin_port_is_refused_naming_both() {
    let admin: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let inbound = [("127.0.0.1:15006".parse().unwrap(), 15020)];
    let err = refuse_admin_as_app(&inbound, admin)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--inbound 127.0.0.1:15006=15020") && err.contains("admin port"),
        "{err}"
    );
}

#[test]
fn other_application_ports_and_an_ephemeral_admin_port_are_accepted() {
    let app = [("127.0.0.1:15006".parse().unwrap(), 8080)];
    assert!(refuse_admin_as_app(&app, "127.0.0.1:15020".parse().unwrap()).is_ok());
    // `--admin 127.0.0.1:0` (tests, benchmarks): the kernel picks a port no
    // application port can name in advance.
    let any = [("127.0.0.1:15006".parse().unwrap(), 15020)];
    assert!(refuse_admin_as_app(&any, "127.0.0.1:0".parse().unwrap()).is_ok());
}
