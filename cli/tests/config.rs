//! Runner configuration through the binary: `--print-default-config`, `--check-config`, the
//! precedence file < environment < flags, and one-line errors for bad files.

mod support;

use support::{short_temp_dir, tessera, tessera_with_env};

const COMPONENTS: [&str; 3] = ["gate", "tablet", "coordinator"];

#[tokio::test]
async fn printed_defaults_are_a_valid_config_file_for_every_component() {
    // Goal: what `--print-default-config` prints is TOML the same component accepts back with
    // `--check-config`, and it shows the embedded component section.
    let dir = short_temp_dir();
    for component in COMPONENTS {
        let printed = tessera(&[component, "--print-default-config"]).await;
        let text = printed.ok().to_string();
        assert!(
            text.contains(&format!("[{component}]")),
            "{component}:\n{text}"
        );
        assert!(text.contains("topo = "), "{component}:\n{text}");
        let file = dir.path().join(format!("{component}.toml"));
        std::fs::write(&file, &text).expect("write config");
        let checked = tessera(&[
            component,
            "--config",
            &file.display().to_string(),
            "--check-config",
        ])
        .await;
        assert!(
            checked.ok().starts_with("ok: "),
            "{component}: {}",
            checked.stdout
        );
    }
}

#[tokio::test]
async fn unknown_fields_and_bad_values_fail_with_one_line_naming_the_place() {
    // Goal: a config file with an unknown key, a wrong type or broken TOML is refused with exit
    // status 1 and one line naming the file, the position and the problem.
    let dir = short_temp_dir();
    let cases = [
        (
            "gate",
            "[gate]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n",
            ":3:1: unknown field `bogus`",
        ),
        (
            "tablet",
            "[tablet.postgres]\nport = \"x\"\n",
            ":2:8: invalid type: string \"x\", expected u16",
        ),
        (
            "coordinator",
            "[coordinator\nzone = \"z\"\n",
            ":1:13: unclosed table",
        ),
        (
            "tablet",
            "metrics = \"127.0.0.1:1\"\n",
            ":1:1: unknown field `metrics`",
        ),
    ];
    for (component, text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).expect("write config");
        let file = file.display().to_string();
        let outcome = tessera(&[component, "--config", &file, "--check-config"]).await;
        let line = outcome.failed();
        assert!(
            line.contains(&format!("{file}{expected}")),
            "{component}: {line}"
        );
    }
    let missing = tessera(&[
        "gate",
        "--config",
        "/nonexistent/gate.toml",
        "--check-config",
    ])
    .await;
    assert!(
        missing
            .failed()
            .contains("cannot read config file /nonexistent/gate.toml")
    );
}

#[tokio::test]
async fn flags_override_environment_which_overrides_the_file() {
    // Goal: each layer wins over the one below it. The file's zone is invalid, so the check
    // passes only if the environment replaced it, and fails again if a flag replaces that.
    let dir = short_temp_dir();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "[coordinator]\nzone = \"not a zone\"\n").expect("write config");
    let file = file.display().to_string();
    let base = ["coordinator", "--config", file.as_str(), "--check-config"];

    let from_file = tessera(&base).await;
    assert!(
        from_file
            .failed()
            .contains("coordinator.zone: \"not a zone\"")
    );

    let from_env = tessera_with_env(&base, &[("TESSERA_ZONE", "zone2")]).await;
    from_env.ok();

    let mut with_flag = base.to_vec();
    with_flag.extend(["--zone", "bad zone"]);
    let from_flag = tessera_with_env(&with_flag, &[("TESSERA_ZONE", "zone2")]).await;
    assert!(from_flag.failed().contains("\"bad zone\""));
}

#[tokio::test]
async fn tablet_flags_map_onto_the_embedded_tablet_and_postgres_config() {
    // Goal: `--data-dir`, ports and `--pg-setting` reach the tablet and PostgreSQL sections, and
    // their own validation (reserved settings, clashing ports, the id's zone prefix) runs.
    let ok = tessera(&[
        "tablet",
        "--id",
        "zone2-7",
        "--zone",
        "zone2",
        "--shard",
        "-80",
        "--pg-port",
        "41000",
        "--pooler-port",
        "41001",
        "--grpc-port",
        "41002",
        "--data-dir",
        "/tmp/t",
        "--pg-setting",
        "fsync=off",
        "--check-config",
    ])
    .await;
    ok.ok();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--pg-setting", "port=1"],
            "tablet.postgres: invalid PostgreSQL setting \"port\"",
        ),
        (
            &["--pg-port", "41000", "--pooler-port", "41000"],
            "tablet.ports",
        ),
        (
            &["--zone", "zone2"],
            "tablet.id: \"zone1-101\" must start with its zone",
        ),
        (&["--shard", "zz"], "tablet.shard"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["tablet"];
        args.extend_from_slice(flags);
        args.push("--check-config");
        let outcome = tessera(&args).await;
        assert!(
            outcome.failed().contains(expected),
            "{flags:?}: {}",
            outcome.stderr
        );
    }
    let bad_setting = tessera(&["tablet", "--pg-setting", "fsync", "--check-config"]).await;
    assert_eq!(
        bad_setting.status.code(),
        Some(2),
        "clap usage error: {}",
        bad_setting.stderr
    );
}

#[tokio::test]
async fn a_runner_refuses_the_in_process_memory_topology() {
    // Goal: `--topo memory` cannot work across processes, so runners refuse it up front.
    for component in COMPONENTS {
        let outcome = tessera(&[component, "--topo", "memory", "--check-config"]).await;
        assert!(
            outcome
                .failed()
                .contains("topo: `memory` lives inside one process"),
            "{component}"
        );
    }
}
