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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
