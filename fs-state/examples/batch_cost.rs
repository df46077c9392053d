//! Measures what one ordered batch costs a replica: `apply` of its operations, the
//! batch's `sync()` (the durability point before replies leave) and a checkpoint's
//! `state_digest()`. Run with `cargo run --release -p fs-state --example batch_cost
//! [DIR]`; DIR (default: a temp dir) should be on the disk replicas will use. With
//! `SYNCFS=1` in the environment the batch is flushed with one `syncfs(2)`.

use std::time::{Duration, Instant};

use fs_state::*;

const ROUNDS: usize = 200;

struct Bench {
    sm: FileStateMachine,
    now: u64,
    seq: u64,
}

#[derive(Default)]
struct Costs {
    apply: Vec<Duration>,
    sync: Vec<Duration>,
    digest: Vec<Duration>,
    stats: SyncStats,
}

impl Bench {
    fn apply(&mut self, op: FsOp) -> FsReply {
        let ctx = OpContext {
            timestamp_ns: self.now,
            cred: AuthUnix::root(),
        };
        self.sm.apply(&ctx, &op).unwrap()
    }

    fn fresh(&mut self, prefix: &str) -> Filename3 {
        self.seq += 1;
        Filename3::from(format!("{prefix}{}", self.seq).as_str())
    }

    fn create_write(&mut self, data: &[u8]) {
        let name = self.fresh("f");
        let root = self.sm.root_handle();
        let fh = created(self.apply(FsOp::Create {
            dir: root,
            name,
            how: CreateHow::Unchecked(Sattr3::default()),
        }));
        self.apply(FsOp::Write {
            fh,
            offset: 0,
            stable: StableHow::FileSync,
            data: data.to_vec(),
        });
    }

    fn rounds(&mut self, mut batch: impl FnMut(&mut Bench)) -> Costs {
        let mut c = Costs::default();
        for _ in 0..ROUNDS {
            self.now += 1_000_000;
            let t = Instant::now();
            batch(self);
            c.apply.push(t.elapsed());
            let t = Instant::now();
            self.sm.sync().unwrap();
            c.sync.push(t.elapsed());
            c.stats = self.sm.last_sync_stats();
            let t = Instant::now();
            self.sm.state_digest().unwrap();
            c.digest.push(t.elapsed());
        }
        c
    }
}

fn created(r: FsReply) -> FileHandle {
    match r.0 {
        Ok(ReplyBody::Create { obj: Some(fh), .. }) => fh,
        r => panic!("{r:?}"),
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn main() {
    let tmp = match std::env::args().nth(1) {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let mut b = Bench {
        sm: FileStateMachine::open(
            tmp.path(),
            FsConfig {
                sync_mode: if std::env::var("SYNCFS").is_ok() {
                    SyncMode::Syncfs
                } else {
                    SyncMode::PerObject
                },
                ..FsConfig::default()
            },
        )
        .unwrap(),
        now: 1_700_000_000_000_000_000,
        seq: 0,
    };
    let root = b.sm.root_handle();
    let data = vec![0x5a; 4096];
    let mut results: Vec<(&str, Costs)> = Vec::new();

    results.push(("CREATE + WRITE 4 KiB", b.rounds(|b| b.create_write(&data))));
    let name = b.fresh("inplace");
    let target = created(b.apply(FsOp::Create {
        dir: root.clone(),
        name,
        how: CreateHow::Unchecked(Sattr3::default()),
    }));
    results.push((
        "WRITE 4 KiB in place",
        b.rounds(|b| {
            b.apply(FsOp::Write {
                fh: target.clone(),
                offset: 0,
                stable: StableHow::FileSync,
                data: data.clone(),
            });
        }),
    ));
    results.push((
        "MKDIR",
        b.rounds(|b| {
            let name = b.fresh("d");
            b.apply(FsOp::Mkdir {
                dir: root.clone(),
                name,
                attrs: Sattr3::default(),
            });
        }),
    ));
    results.push((
        "16 x (CREATE + WRITE 4 KiB)",
        b.rounds(|b| {
            for _ in 0..16 {
                b.create_write(&data);
            }
        }),
    ));
    results.push((
        "GETATTR + READ 4 KiB (no change)",
        b.rounds(|b| {
            b.apply(FsOp::Getattr { fh: target.clone() });
            b.apply(FsOp::Read {
                fh: target.clone(),
                offset: 0,
                count: 4096,
            });
        }),
    ));

    println!(
        "{ROUNDS} rounds per row, {} objects at the end; microseconds p50 / p90",
        b.sm.object_count()
    );
    println!(
        "{:<34} {:>15} {:>15} {:>15}   last sync: files, dirs, journal bytes",
        "batch", "apply", "sync", "state_digest"
    );
    for (name, mut c) in results {
        println!(
            "{:<34} {:>7.0} /{:>6.0} {:>7.0} /{:>6.0} {:>7.0} /{:>6.0}   {}, {}, {}",
            name,
            pct(&mut c.apply, 0.5),
            pct(&mut c.apply, 0.9),
            pct(&mut c.sync, 0.5),
            pct(&mut c.sync, 0.9),
            pct(&mut c.digest, 0.5),
            pct(&mut c.digest, 0.9),
            c.stats.files_synced,
            c.stats.dirs_synced,
            c.stats.journal_bytes
        );
    }
}
