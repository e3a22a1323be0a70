//! The gRPC code in `src/pb/` is generated from `proto/` ahead of time, so that building the
//! crate needs no `protoc`. This test generates it again and fails if the committed files differ.
//!
//! To regenerate after changing `proto/` (or upgrading tonic/prost):
//! `ROOKERY_ETCD_REGENERATE=1 cargo test -p rookery-etcd --test generated`.

use std::path::{Path, PathBuf};

fn protoc() -> PathBuf {
    if let Some(p) = std::env::var_os("PROTOC_FOR_REGENERATION") {
        return p.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("protoc");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "protoc not found: this test regenerates the etcd gRPC code to check the committed copy \
         (install it with `apt-get install protobuf-compiler`); building the crate does not need it"
    );
}

#[test]
fn committed_grpc_code_matches_the_protos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("rookery-etcd-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc());
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_with_config(
            config,
            &[root.join("proto/etcd/api/etcdserverpb/rpc.proto")],
            &[root.join("proto")],
        )
        .expect("generating the etcd gRPC code");
    let committed = root.join("src/pb");
    let regenerate = std::env::var_os("ROOKERY_ETCD_REGENERATE").is_some();
    let mut stale = Vec::new();
    // The packages the client uses; the options-only imports (google.api, openapiv2) are not
    // kept.
    for name in ["authpb.rs", "etcdserverpb.rs", "mvccpb.rs"] {
        let fresh = std::fs::read_to_string(out.join(name)).expect("a generated package");
        let path = committed.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(fresh.as_str()) {
            if regenerate {
                std::fs::write(&path, &fresh).unwrap();
            } else {
                stale.push(name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        stale.is_empty(),
        "src/pb is out of date ({stale:?}); regenerate it with \
         ROOKERY_ETCD_REGENERATE=1 cargo test -p rookery-etcd --test generated"
    );
}
