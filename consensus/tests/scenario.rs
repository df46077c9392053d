//! Scenario tests that read like the protocol: each file in `tests/scenarios/` is a
//! script driving real replicas and clients through a scripted network, asserting the
//! exact messages sent and the state reached. The language (one command per line, `#`
//! starts a comment):
//!
//! ```text
//! cluster f=1 checkpoint=4 batch=8        start 2f+1 replicas
//! request c=0 append k=v                  client c submits (append|put|get|null); `ro` = read-only
//! deliver                                  deliver until the network is quiet
//! drop kind=PREPARE from=0 [to=2]          drop matching messages from now on
//! allow                                    remove every drop rule
//! isolate 0 / heal                         cut / restore all links of a replica
//! tick 50                                  50 clock ticks for everyone, delivering after each
//! crash 1 / restart 1                      lose volatile state / recover from durable records
//! crash-lose-tail 1 2                      crash losing the last 2 logged messages (USIG ahead)
//! crash-lose-disk 1                        crash losing every durable record, keeping the USIG
//! send 1 0 fetch-from-checkpoint sender=2 n=0   replica 1 sends replica 0 that message
//! expect executed 0,1,2 = 3                executed batches per replica
//! expect view 0,1,2 = 1                    current view
//! expect stable 0,1,2 = 4                  stable checkpoint
//! expect log 0 <= 4                        accepted PREPAREs held above the checkpoint
//! expect rebasing 1 = 1                    1 while the replica re-bases (I8), else 0
//! expect sent PREPARE v0 n1 reqs2 from 0   that exact message was sent (see `describe`)
//! expect not-sent COMMIT v0 n2 from 1
//! expect done c=0 = 1;2;                   the client's last completed result
//! expect pending c=0                       the client still waits
//! expect dropped 1 reproposal_mismatch     the replica counted that reason at least once
//! expect not-dropped 1 reproposal_mismatch never
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use consensus::app::Application;
use consensus::message::{PeerMessage, UiMessage};
use consensus::replica::{CoreState, DurableRecords};
use consensus::{
    Client, ClientOutput, Config, Input, KvApp, KvOp, Message, Output, Replica, SimCrypto, validate,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    R(u32),
    C(u64),
}

/// What survives a crash: protocol records, snapshots, the USIG counter.
#[derive(Default)]
struct Durable {
    records: DurableRecords,
    snapshots: BTreeMap<u64, (CoreState, Vec<u8>)>,
    usig: u64,
}

struct Rule {
    kind: Option<String>,
    from: Option<u32>,
    to: Option<u32>,
}

struct World {
    config: Config,
    crypto: SimCrypto,
    replicas: Vec<Option<Replica>>,
    apps: Vec<KvApp>,
    durable: Vec<Durable>,
    clients: BTreeMap<u64, Client>,
    done: BTreeMap<u64, Vec<u8>>,
    net: VecDeque<(Node, Node, Message)>,
    rules: Vec<Rule>,
    isolated: Vec<u32>,
    sent: Vec<String>,
    now_ns: u64,
}

/// One line per message, used by `expect sent`.
fn describe(m: &Message) -> String {
    match m {
        Message::Peer(PeerMessage::Ui(u)) => match u {
            UiMessage::Prepare(p) if !p.batch.rebases.is_empty() => format!(
                "PREPARE v{} n{} reqs{} rebases{}",
                p.header.view,
                p.header.n,
                p.batch.requests.len(),
                p.batch.rebases.len()
            ),
            UiMessage::Prepare(p) => format!(
                "PREPARE v{} n{} reqs{}",
                p.header.view,
                p.header.n,
                p.batch.requests.len()
            ),
            UiMessage::Commit(c) => format!("COMMIT v{} n{}", c.header.view, c.header.n),
            UiMessage::Checkpoint(c) => match c.view_top {
                Some(v) => format!("CHECKPOINT n{} top-of-view{v}", c.n),
                None => format!("CHECKPOINT n{}", c.n),
            },
            UiMessage::ViewChange(vc) => format!(
                "VIEW-CHANGE v{} base{} accepted{}",
                vc.new_view,
                vc.cert.n,
                vc.accepted.len()
            ),
            UiMessage::NewView(nv) => {
                format!(
                    "NEW-VIEW v{} base{} reproposals{}",
                    nv.new_view,
                    nv.base,
                    nv.reproposals.len()
                )
            }
            UiMessage::Rebase(r) => format!("REBASE last_logged{}", r.last_logged),
        },
        Message::Peer(PeerMessage::ReqViewChange { new_view, .. }) => {
            format!("REQ-VIEW-CHANGE v{new_view}")
        }
        Message::Peer(p) => format!("{p:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap_or("")
            .to_string(),
        Message::Request(r) => format!("REQUEST c{} s{}", r.client, r.seq),
        Message::Reply(r) => format!("REPLY c{} s{}", r.client, r.seq),
    }
}

fn kind_of(m: &Message) -> String {
    describe(m).split(' ').next().unwrap_or("").to_string()
}

impl World {
    fn new(config: Config) -> Self {
        let crypto = SimCrypto::new([7; 32]);
        let n = config.n();
        World {
            replicas: (0..n)
                .map(|i| Some(Replica::new(i, config.clone(), Box::new(crypto.clone()))))
                .collect(),
            apps: (0..n).map(|_| KvApp::default()).collect(),
            durable: (0..n).map(|_| Durable::default()).collect(),
            clients: BTreeMap::new(),
            done: BTreeMap::new(),
            net: VecDeque::new(),
            rules: Vec::new(),
            isolated: Vec::new(),
            sent: Vec::new(),
            now_ns: 0,
            crypto,
            config,
        }
    }

    fn post(&mut self, from: Node, to: Node, msg: Message) {
        if let (Node::R(f), Node::R(t)) = (from, to) {
            self.sent
                .push(format!("{} from {f} to {t}", describe(&msg)));
        }
        self.net.push_back((from, to, msg));
    }

    fn feed(&mut self, i: u32, input: Input) {
        let mut work = VecDeque::from([input]);
        while let Some(input) = work.pop_front() {
            let Some(r) = self.replicas[i as usize].as_mut() else {
                return;
            };
            for o in r.step(input) {
                self.perform(i, o, &mut work);
            }
        }
    }

    fn perform(&mut self, i: u32, o: Output, work: &mut VecDeque<Input>) {
        let n = self.config.n();
        match o {
            Output::Send { to, msg } => self.post(Node::R(i), Node::R(to), Message::Peer(msg)),
            Output::Broadcast(msg) => {
                for j in (0..n).filter(|&j| j != i) {
                    self.post(Node::R(i), Node::R(j), Message::Peer(msg.clone()));
                }
            }
            Output::CreateUi { digest } => {
                let d = &mut self.durable[i as usize];
                d.usig += 1;
                let cert = self.crypto.ui_cert(i, d.usig, &digest);
                work.push_back(Input::UiCreated(usig::Ui {
                    counter: d.usig,
                    cert,
                }));
            }
            Output::Execute {
                n,
                timestamp_ns,
                requests,
                want_digest,
            } => {
                let app = &mut self.apps[i as usize];
                let results = app.execute(n, timestamp_ns, &requests);
                let app_digest = want_digest.then(|| app.state_digest());
                work.push_back(Input::Executed {
                    n,
                    results,
                    app_digest,
                });
            }
            Output::ComputeDigest { n } => {
                let app_digest = self.apps[i as usize].state_digest();
                work.push_back(Input::Digest { n, app_digest });
            }
            Output::ExecuteReadOnly { request } => {
                let result = self.apps[i as usize].query(&request.op);
                work.push_back(Input::ReadOnlyExecuted {
                    client: request.client,
                    seq: request.seq,
                    result,
                });
            }
            Output::Reply(r) => self.post(Node::R(i), Node::C(r.client), Message::Reply(r)),
            Output::Persist(rec) => self.durable[i as usize].records.apply(rec),
            Output::TakeSnapshot { n, core_state } => {
                let bytes = self.apps[i as usize].snapshot();
                self.durable[i as usize]
                    .snapshots
                    .insert(n, (core_state, bytes));
            }
            Output::Stable { n } => {
                let d = &mut self.durable[i as usize];
                d.snapshots = d.snapshots.split_off(&n);
            }
            Output::FetchState { cert } => {
                // The scripted world transfers state instantly from any replica holding it.
                let found =
                    (0..n).find_map(|j| self.durable[j as usize].snapshots.get(&cert.n).cloned());
                if let Some((core, bytes)) = found {
                    self.apps[i as usize].restore(&bytes).expect("snapshot");
                    self.durable[i as usize]
                        .snapshots
                        .insert(cert.n, (core.clone(), bytes));
                    work.push_back(Input::StateInstalled {
                        cert,
                        core_state: core,
                    });
                }
            }
        }
    }

    fn blocked(&self, from: Node, to: Node, msg: &Message) -> bool {
        let id = |n: Node| match n {
            Node::R(i) => Some(i),
            Node::C(_) => None,
        };
        if [from, to]
            .iter()
            .any(|n| id(*n).is_some_and(|i| self.isolated.contains(&i)))
        {
            return true;
        }
        let kind = kind_of(msg);
        self.rules.iter().any(|r| {
            r.kind.as_ref().is_none_or(|k| *k == kind)
                && r.from.is_none_or(|f| Some(f) == id(from))
                && r.to.is_none_or(|t| Some(t) == id(to))
        })
    }

    fn deliver_one(&mut self) -> bool {
        let Some((from, to, msg)) = self.net.pop_front() else {
            return false;
        };
        if self.blocked(from, to, &msg) {
            return true;
        }
        match (to, msg) {
            (Node::C(c), Message::Reply(r)) => {
                if let Some(client) = self.clients.get_mut(&c) {
                    let outs = client.on_reply(&self.crypto, &r);
                    self.client_outputs(c, outs);
                }
            }
            (Node::R(i), Message::Peer(m)) => {
                let Node::R(j) = from else { return true };
                if self.replicas[i as usize].is_none() {
                    return true;
                }
                match validate::peer_message(&self.config, &self.crypto, j, m) {
                    Ok(v) => self.feed(i, Input::Peer { from: j, msg: v }),
                    Err(e) => self.replicas[i as usize]
                        .as_mut()
                        .unwrap()
                        .record_rejected(e),
                }
            }
            (Node::R(i), Message::Request(req)) => {
                if self.replicas[i as usize].is_none() {
                    return true;
                }
                match validate::request(&self.config, &self.crypto, req) {
                    Ok(v) => self.feed(i, Input::Request(v)),
                    Err(e) => self.replicas[i as usize]
                        .as_mut()
                        .unwrap()
                        .record_rejected(e),
                }
            }
            _ => {}
        }
        true
    }

    fn deliver_all(&mut self) {
        let mut steps = 0;
        while self.deliver_one() {
            steps += 1;
            assert!(steps < 1_000_000, "network never went quiet");
        }
    }

    fn client_outputs(&mut self, c: u64, outs: Vec<ClientOutput>) {
        for o in outs {
            match o {
                ClientOutput::Send(mut req) | ClientOutput::Resend(mut req) => {
                    req.sig = self.crypto.sign_request(req.client, &req.digest());
                    for i in 0..self.config.n() {
                        self.post(Node::C(c), Node::R(i), Message::Request(req.clone()));
                    }
                }
                ClientOutput::Done { result, .. } => {
                    self.done.insert(c, result);
                }
            }
        }
    }

    fn tick(&mut self) {
        self.now_ns += self.config.tick_ns;
        for i in 0..self.config.n() {
            if self.replicas[i as usize].is_some() {
                self.feed(
                    i,
                    Input::Tick {
                        now_ns: self.now_ns,
                    },
                );
            }
        }
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for c in ids {
            let outs = self.clients.get_mut(&c).unwrap().on_tick();
            self.client_outputs(c, outs);
        }
        self.deliver_all();
    }

    /// Gives every replica its first clock reading (backups judge the primary's
    /// timestamps against it), without counting as a tick of the script.
    fn read_clocks(&mut self) {
        self.now_ns = self.config.tick_ns;
        for i in 0..self.config.n() {
            if self.replicas[i as usize].is_some() {
                self.feed(
                    i,
                    Input::Tick {
                        now_ns: self.now_ns,
                    },
                );
            }
        }
    }

    fn restart(&mut self, i: u32) {
        let d = &self.durable[i as usize];
        let (core, app) = match d.snapshots.get(&d.records.stable.n) {
            Some((core, bytes)) => {
                let mut app = KvApp::default();
                app.restore(bytes).unwrap();
                (core.clone(), app)
            }
            None => (CoreState::default(), KvApp::default()),
        };
        let rec = d.records.recovered(core, d.usig);
        self.apps[i as usize] = app;
        self.replicas[i as usize] = Some(Replica::recover(
            i,
            self.config.clone(),
            Box::new(self.crypto.clone()),
            rec,
        ));
    }

    fn replica(&self, i: u32) -> &Replica {
        self.replicas[i as usize].as_ref().expect("replica is up")
    }
}

fn kv(args: &[&str]) -> (KvOp, bool) {
    let ro = args.contains(&"ro");
    let kvp = |s: &str| {
        let (k, v) = s.split_once('=').unwrap_or((s, ""));
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    };
    let op = match args[0] {
        "append" => {
            let (key, value) = kvp(args[1]);
            KvOp::Append { key, value }
        }
        "put" => {
            let (key, value) = kvp(args[1]);
            KvOp::Put { key, value }
        }
        "get" => KvOp::Get {
            key: args[1].as_bytes().to_vec(),
        },
        "null" => KvOp::Null,
        other => panic!("unknown op {other}"),
    };
    (op, ro)
}

fn ids(s: &str) -> Vec<u32> {
    s.split(',')
        .map(|x| x.parse().expect("replica id"))
        .collect()
}

fn kv_arg<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn run_script(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut world: Option<World> = None;
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}: {line}", path.display(), lineno + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] == "cluster" {
            let f = kv_arg(&words, "f").map_or(1, |v| v.parse().unwrap());
            let mut config = Config::new(f);
            config.checkpoint_interval =
                kv_arg(&words, "checkpoint").map_or(4, |v| v.parse().unwrap());
            config.batch_requests_max = kv_arg(&words, "batch").map_or(8, |v| v.parse().unwrap());
            config.pipeline_max = kv_arg(&words, "pipeline").map_or(4, |v| v.parse().unwrap());
            config.request_timeout_ticks = 20;
            config.view_change_timeout_ticks = 20;
            config.fetch_timeout_ticks = 2;
            config.status_interval_ticks = 5;
            config.state_transfer_timeout_ticks = 5;
            config.tick_ns = 1_000_000;
            let mut w = World::new(config);
            w.read_clocks();
            world = Some(w);
            continue;
        }
        let w = world
            .as_mut()
            .unwrap_or_else(|| panic!("{at}: no cluster yet"));
        let rest = &words[1..];
        match words[0] {
            "request" => {
                let c: u64 = kv_arg(rest, "c").expect("c=").parse().unwrap();
                let (op, ro) = kv(&rest[1..]);
                let config = w.config.clone();
                let client = w
                    .clients
                    .entry(c)
                    .or_insert_with(|| Client::new(c, config, 1, 10));
                let outs = client.submit(op.encode(), ro);
                w.done.remove(&c);
                w.client_outputs(c, outs);
            }
            "deliver" => w.deliver_all(),
            "drop" => w.rules.push(Rule {
                kind: kv_arg(rest, "kind").map(str::to_string),
                from: kv_arg(rest, "from").map(|v| v.parse().unwrap()),
                to: kv_arg(rest, "to").map(|v| v.parse().unwrap()),
            }),
            "allow" => w.rules.clear(),
            "isolate" => w.isolated.extend(ids(rest[0])),
            "heal" => w.isolated.clear(),
            "tick" => {
                for _ in 0..rest[0].parse::<u32>().unwrap() {
                    w.tick();
                }
            }
            "crash" => {
                for i in ids(rest[0]) {
                    w.replicas[i as usize] = None;
                }
            }
            "crash-lose-tail" => {
                // The crash also loses the last `k` messages' records (and any intent):
                // the USIG counter stays ahead of the log.
                let k: usize = rest[1].parse().unwrap();
                for i in ids(rest[0]) {
                    w.replicas[i as usize] = None;
                    let d = &mut w.durable[i as usize];
                    for _ in 0..k {
                        d.records.sent.pop_last();
                    }
                    d.records.intent = None;
                }
            }
            "crash-lose-disk" => {
                // The data directory is gone; the USIG (its own device) keeps its counter.
                for i in ids(rest[0]) {
                    w.replicas[i as usize] = None;
                    let d = &mut w.durable[i as usize];
                    d.records = DurableRecords::default();
                    d.snapshots.clear();
                }
            }
            "restart" => {
                for i in ids(rest[0]) {
                    w.restart(i);
                    w.feed(
                        i,
                        Input::Tick {
                            now_ns: w.now_ns.max(1),
                        },
                    );
                }
            }
            "send" => {
                let (from, to): (u32, u32) = (rest[0].parse().unwrap(), rest[1].parse().unwrap());
                let msg = match rest[2] {
                    "fetch-from-checkpoint" => PeerMessage::FetchFromCheckpoint {
                        sender: kv_arg(rest, "sender").expect("sender=").parse().unwrap(),
                        n: kv_arg(rest, "n").expect("n=").parse().unwrap(),
                    },
                    other => panic!("{at}: unknown message {other}"),
                };
                w.post(Node::R(from), Node::R(to), Message::Peer(msg));
            }
            "expect" => expect(w, rest, &at),
            other => panic!("{at}: unknown command {other}"),
        }
    }
}

fn expect(w: &World, args: &[&str], at: &str) {
    let per_replica = |get: &dyn Fn(&Replica) -> u64| {
        let want: u64 = args[3].parse().unwrap();
        for i in ids(args[1]) {
            let got = get(w.replica(i));
            match args[2] {
                "=" => assert_eq!(
                    got,
                    want,
                    "{at}: replica {i}: {}",
                    w.replica(i).debug_summary()
                ),
                "<=" => assert!(got <= want, "{at}: replica {i} has {got}"),
                ">=" => assert!(got >= want, "{at}: replica {i} has {got}"),
                op => panic!("{at}: unknown comparison {op}"),
            }
        }
    };
    match args[0] {
        "executed" => per_replica(&|r| r.executed_n()),
        "view" => per_replica(&|r| r.view()),
        "stable" => per_replica(&|r| r.stable_checkpoint().n),
        "log" => per_replica(&|r| r.log_len() as u64),
        "rebasing" => per_replica(&|r| u64::from(r.is_rebasing())),
        "sent" | "not-sent" => {
            let text = args[1..].join(" ");
            let found = w.sent.iter().any(|s| s.starts_with(&text));
            assert_eq!(
                found,
                args[0] == "sent",
                "{at}: messages sent were:\n{}",
                w.sent.join("\n")
            );
        }
        "done" => {
            let c: u64 = kv_arg(args, "c").unwrap().parse().unwrap();
            let want = args[3..].join(" ");
            let got = w
                .done
                .get(&c)
                .map(|r| String::from_utf8_lossy(r).to_string());
            assert_eq!(got.as_deref(), Some(want.as_str()), "{at}");
        }
        "pending" => {
            let c: u64 = kv_arg(args, "c").unwrap().parse().unwrap();
            assert!(!w.done.contains_key(&c), "{at}: client {c} completed");
        }
        "dropped" | "not-dropped" => {
            let i: u32 = args[1].parse().unwrap();
            let n = w.replica(i).dropped().get(args[2]).copied().unwrap_or(0);
            assert_eq!(
                n > 0,
                args[0] == "dropped",
                "{at}: dropped counters {:?}",
                w.replica(i).dropped()
            );
        }
        other => panic!("{at}: unknown expectation {other}"),
    }
}

macro_rules! scenarios {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_script(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios").join($file));
            }
        )*

        #[test]
        fn every_script_has_a_test() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
            let listed = [$($file),*];
            for e in std::fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                assert!(listed.contains(&name.as_str()), "{name} is not run by any test");
            }
        }
    };
}

scenarios! {
    normal_case => "01-normal-case.scen",
    batching => "02-batching.scen",
    checkpoint_and_log_truncation => "03-checkpoint.scen",
    view_change_isolated_primary => "04-view-change-isolated-primary.scen",
    view_change_keeps_batch_executed_by_backups => "05-view-change-keeps-executed.scen",
    backup_crash_catches_up_by_retransmission => "06-crash-restart.scen",
    state_transfer_behind_stable_checkpoint => "07-state-transfer.scen",
    view_change_timeout_doubles_and_skips_dead_primary => "08-consecutive-view-changes.scen",
    usig_gap_rebase_rejoins => "09-usig-gap-rejoin.scen",
    lost_disk_rebase_rejoins_by_state_transfer => "10-lost-disk-rejoin.scen",
    primary_rebases_and_is_replaced => "11-primary-rebases.scen",
    idle_cluster_catch_up_after_state_transfer => "12-idle-catch-up-after-transfer.scen",
    idle_cluster_catch_up_by_retransmission => "13-idle-catch-up-by-retransmission.scen",
    primary_fills_to_the_next_checkpoint_for_a_cut => "14-fill-to-checkpoint-for-a-cut.scen",
}
