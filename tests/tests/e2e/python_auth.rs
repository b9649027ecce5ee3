//! The token check seen from the Python grpcio client, in both forms the official clients use.

use puppet_tests::{Server, TOKEN, installed, repo_root};

#[test]
fn python_grpcio_client_authenticates_by_header_or_authority() {
    let python = installed("PUPPET_TEST_PYTHON", "a Python with grpcio");
    let server = Server::start(&[]);
    let out = std::process::Command::new(python)
        .arg(repo_root().join("tests/python/auth_check.py"))
        .arg(server.addr.to_string())
        .arg(TOKEN)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "auth_check.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in
        ["no-token UNAUTHENTICATED", "wrong-token UNAUTHENTICATED", "header OK puppet-rs/", "authority OK puppet-rs/"]
    {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}
