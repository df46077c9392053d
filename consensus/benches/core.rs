//! Core CPU cost per request, crypto stubbed: three replicas exchange real protocol
//! messages in memory (validation included, signatures and MACs replaced by constant
//! checks), so the figure is the protocol's own bookkeeping.

use std::collections::VecDeque;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use consensus::message::{PeerMessage, Request};
use consensus::{Config, Crypto, Input, Output, Replica, validate};
use usig::{Digest, ReplicaId, Ui};

struct NullCrypto;

impl Crypto for NullCrypto {
    fn verify_ui(&self, _: ReplicaId, _: &Digest, ui: &Ui) -> bool {
        ui.counter > 0
    }
    fn verify_request(&self, _: u64, _: &Digest, _: &[u8]) -> bool {
        true
    }
    fn reply_mac(&self, _: ReplicaId, _: u64, _: &Digest) -> [u8; 32] {
        [0; 32]
    }
}

struct Cluster {
    config: Config,
    replicas: Vec<Replica>,
    counters: Vec<u64>,
    net: VecDeque<(ReplicaId, ReplicaId, PeerMessage)>,
    replies: u64,
    seq: u64,
}

impl Cluster {
    fn new(batch: usize) -> Self {
        let mut config = Config::new(1);
        config.batch_requests_max = batch;
        config.checkpoint_interval = 128;
        Cluster {
            replicas: (0..3)
                .map(|i| Replica::new(i, config.clone(), Box::new(NullCrypto)))
                .collect(),
            counters: vec![0; 3],
            net: VecDeque::new(),
            replies: 0,
            seq: 0,
            config,
        }
    }

    fn feed(&mut self, i: ReplicaId, input: Input) {
        let mut work = VecDeque::from([input]);
        while let Some(input) = work.pop_front() {
            for o in self.replicas[i as usize].step(input) {
                match o {
                    Output::Broadcast(m) => {
                        for j in (0..3).filter(|&j| j != i) {
                            self.net.push_back((i, j, m.clone()));
                        }
                    }
                    Output::Send { to, msg } => self.net.push_back((i, to, msg)),
                    Output::CreateUi { .. } => {
                        self.counters[i as usize] += 1;
                        work.push_back(Input::UiCreated(Ui {
                            counter: self.counters[i as usize],
                            cert: vec![],
                        }));
                    }
                    Output::Execute {
                        n,
                        requests,
                        want_digest,
                        ..
                    } => {
                        let results = requests.iter().map(|_| Vec::new()).collect();
                        work.push_back(Input::Executed {
                            n,
                            results,
                            app_digest: want_digest.then_some([0; 32]),
                        });
                    }
                    Output::ComputeDigest { n } => work.push_back(Input::Digest {
                        n,
                        app_digest: [0; 32],
                    }),
                    Output::Reply(_) => self.replies += 1,
                    _ => {}
                }
            }
        }
    }

    /// Submits `k` requests from `k` clients to every replica and runs to quiescence.
    fn round(&mut self, k: u64) {
        self.seq += 1;
        for c in 0..k {
            let req = Request {
                client: c,
                seq: self.seq,
                read_only: false,
                op: vec![0; 8].into(),
                sig: vec![],
            };
            for i in 0..3 {
                let v = validate::request(&self.config, &NullCrypto, req.clone()).unwrap();
                self.feed(i, Input::Request(v));
            }
        }
        while let Some((from, to, msg)) = self.net.pop_front() {
            let v = validate::peer_message(&self.config, &NullCrypto, from, msg).unwrap();
            self.feed(to, Input::Peer { from, msg: v });
        }
    }
}

fn per_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_per_request");
    for (clients, batch) in [(1u64, 1usize), (64, 64), (64, 8)] {
        g.throughput(Throughput::Elements(clients));
        g.bench_with_input(
            BenchmarkId::new(format!("clients{clients}"), format!("batch{batch}")),
            &(clients, batch),
            |b, &(clients, batch)| {
                let mut cluster = Cluster::new(batch);
                b.iter(|| cluster.round(clients));
                assert!(cluster.replies > 0);
            },
        );
    }
    g.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
