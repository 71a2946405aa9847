//! `portdistrict attest verify` as a user runs it, on the real AMD Milan material in
//! `control/core/testdata/sev-snp/`: every check printed, the JSON verdict, the exit
//! status (0 only when every check passes: never for this report, which allows
//! debugging).

use std::path::PathBuf;
use std::process::{Command, Output};

fn material(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("core/testdata/sev-snp")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn verify(extra: &[&str]) -> (Output, serde_json::Value) {
    let report = material("attestation.bin");
    let vcek = material("vcek.testcer");
    let mut args = vec!["attest", "verify", report.as_str(), "--vcek", vcek.as_str()];
    let chain = material("milan.testcer");
    if !extra.contains(&"--chain") {
        args.extend(["--chain", chain.as_str()]);
    }
    args.extend_from_slice(extra);
    args.push("--json");
    let out = Command::new(env!("CARGO_BIN_EXE_portdistrict"))
        .args(&args)
        .output()
        .expect("run portdistrict");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

const MEASUREMENT: &str = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01";

#[test]
fn the_real_report_verifies_but_its_policy_allows_debug() {
    let (out, v) = verify(&[
        "--now",
        "2025-06-01T00:00:00Z",
        "--measurement",
        MEASUREMENT,
    ]);
    assert!(!out.status.success());
    assert_eq!(v["verdict"], "failed");
    assert_eq!(v["failed_check"], "policy");
    for ok in [
        "root",
        "ark",
        "ask",
        "vcek",
        "validity",
        "tcb",
        "chip_id",
        "signature",
        "vmpl",
        "measurement",
    ] {
        assert_eq!(v["checks"][ok], "ok", "{ok}: {v}");
    }
    assert_eq!(v["checks"]["policy"], "failed: debug allowed");
    assert_eq!(v["report"]["measurement"], MEASUREMENT);
    assert_eq!(v["report"]["policy"], "0xb0000");
    assert_eq!(v["report"]["reported_tcb"]["microcode"], 68);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("attestation refused: policy: debug allowed")
    );
}

#[test]
fn after_expiry_another_measurement_or_the_vlek_chain_fail_their_checks() {
    let (out, v) = verify(&["--now", "2030-01-01T00:00:00Z"]);
    assert!(!out.status.success());
    assert!(
        v["checks"]["validity"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{v}"
    );
    let (_, v) = verify(&[
        "--now",
        "2025-06-01T00:00:00Z",
        "--measurement",
        &"00".repeat(48),
    ]);
    assert!(
        v["checks"]["measurement"]
            .as_str()
            .unwrap()
            .starts_with("failed: measurement b07af962"),
        "{v}"
    );
    let vlek = material("milanvlek.testcer");
    let (_, v) = verify(&["--now", "2025-06-01T00:00:00Z", "--chain", &vlek]);
    assert_eq!(v["checks"]["root"], "ok");
    assert!(
        v["checks"]["vcek"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{v}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_portdistrict"))
        .args([
            "attest",
            "verify",
            "/nonexistent/report",
            "--vcek",
            "x",
            "--chain",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opening the report /nonexistent/report"),
        "{err}"
    );
}

#[test]
fn exit_attestation_data_binds_the_nodes_persistent_noise_and_wireguard_keys() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let state = std::env::temp_dir().join(format!("pd-attest-data-{}", std::process::id()));
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_portdistrict"))
            .args(["--state-dir", &state.to_string_lossy(), "--run-dir"])
            .arg(state.join("run"))
            .args(["exit", "attestation-data", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    assert_eq!(run(), first, "the keys are kept");
    let key = |k: &str| -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(first[k].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let (noise, wg) = (key("noise_public_key"), key("wireguard_public_key"));
    assert_ne!(noise, wg, "the Noise key is not the WireGuard key");
    let want = portdistrict_control_core::attest::binding(&noise, &wg);
    assert_eq!(first["report_data"], hex::encode(want));
    for f in ["noise.key", "wg.key"] {
        let mode = std::fs::metadata(state.join("exit").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn exit_grant_signs_a_pin_with_the_identity_key() {
    use portdistrict_control_core::attest::grant::Grant;
    use portdistrict_control_core::attest::Smt;
    use std::os::unix::fs::PermissionsExt as _;
    let state = std::env::temp_dir().join(format!("pd-grant-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portdistrict"))
            .args([
                "--state-dir",
                &state.join("s").to_string_lossy(),
                "--run-dir",
            ])
            .arg(state.join("run"))
            .args(args)
            .output()
            .unwrap()
    };
    let key = state.join("seed.key");
    let out = cli(&[
        "identity",
        "init",
        "--namespace",
        "alice.pd.test",
        "--key-file",
        &key.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value =
        serde_json::from_slice(&cli(&["identity", "show", "--json"]).stdout).unwrap();
    let file = state.join("grant.txt");
    let out = cli(&[
        "exit",
        "grant",
        "--measurement",
        MEASUREMENT,
        "--min-abi",
        "1.51",
        "--smt",
        "forbidden",
        "--expires",
        "30d",
        "--out",
        &file.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let g = Grant::decode(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(hex::encode(g.measurement), MEASUREMENT);
    assert_eq!(
        (g.min_abi, g.smt, g.holder),
        ((1, 51), Smt::Forbidden, None)
    );
    assert_eq!(g.expires - g.issued, 30 * 86_400);
    // Signed by this identity: its node ID is derived from the issuer key.
    let node = portdistrict_control_core::identity::PublicIdentity {
        namespace: "alice.pd.test".into(),
        master: g.issuer,
        ecdh: [0; 32],
    }
    .node_id();
    assert_eq!(shown["node_id"], node);
    // Refusals name what is wrong, and write nothing.
    let out = cli(&[
        "exit",
        "grant",
        "--measurement",
        MEASUREMENT,
        "--to",
        "nosuchpeer",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peer here"));
    let out = cli(&["exit", "grant", "--smt", "forbidden"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--measurement <HEX>"));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_reader_that_went_away_is_no_panic() {
    use std::process::Stdio;
    // `portdistrict attest verify ... | true`: the reader is gone before the verdict
    // is written (the verification takes milliseconds); it ends quietly with status
    // 141, as for SIGPIPE, and no panic message.
    let report = material("attestation.bin");
    let vcek = material("vcek.testcer");
    let chain = material("milan.testcer");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portdistrict"))
        .args([
            "attest", "verify", &report, "--vcek", &vcek, "--chain", &chain,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
