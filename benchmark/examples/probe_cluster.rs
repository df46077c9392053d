fn main() {
    let dir = tempfile::tempdir().unwrap();
    let c = nfs_frontend::cluster::LocalCluster::start(nfs_frontend::cluster::ClusterOptions {
        f: 1,
        dir: dir.path().join("c"),
        batching: true,
        null_app: true,
        ..Default::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = c.client();
    rt.block_on(async {
        for i in 0..5 {
            let t = std::time::Instant::now();
            let r = tokio::time::timeout(std::time::Duration::from_secs(3), client.invoke(vec![], false)).await;
            println!("{i}: {:?} in {:?}", r.map(|v| v.len()), t.elapsed());
        }
    });
    println!("{:?}", c.stop());
}
