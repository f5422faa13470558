//! Compiles the `.proto` files with protox: no `protoc` binary is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "ballast/v1/raft.proto",
        "ballast/v1/fleet.proto",
        "ballast/v1/shard.proto",
        "ballast/provider/v1/provider.proto",
        "etcd/mvccpb/kv.proto",
        "etcd/authpb/auth.proto",
        "etcd/etcdserverpb/rpc.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    if std::env::var_os("CARGO_FEATURE_ETCD_JSON").is_some() {
        // The proto3 JSON mapping of etcd's messages, as etcd's gRPC gateway writes them.
        let mut json = pbjson_build::Builder::new();
        for file in descriptors.file.iter().cloned() {
            json.register_file_descriptor(file);
        }
        json.preserve_proto_field_names()
            .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
