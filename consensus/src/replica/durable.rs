//! The bookkeeping every driver does with the core's `Persist` records: what they say
//! after replay, what to keep when the log is rewritten, and the `Recovered` a restart
//! starts from. One implementation for the runtime's log, the simulator and the tests.

use std::collections::BTreeMap;

use super::{CoreState, PersistRecord, Recovered, UsigLease};
use crate::message::{CheckpointCert, Prepare, UiMessage};
use crate::types::{SeqNum, View};

/// What a replica's durable records say.
#[derive(Clone, Debug, Default)]
pub struct DurableRecords {
    pub view: View,
    pub stable: CheckpointCert,
    /// Own UI messages above the own CHECKPOINT of the stable checkpoint.
    pub sent: BTreeMap<u64, UiMessage>,
    pub accepted: BTreeMap<(View, SeqNum), Prepare>,
    pub new_view_accepted: View,
    /// View-top certificates, one per view.
    pub view_certs: BTreeMap<View, CheckpointCert>,
    /// The last message handed to the USIG whose `Sent` record did not follow (yet).
    pub intent: Option<UiMessage>,
    /// The driver's last USIG lease (`PersistRecord::Lease`); the core ignores it.
    pub lease: Option<UsigLease>,
}

impl DurableRecords {
    pub fn apply(&mut self, rec: PersistRecord) {
        match rec {
            PersistRecord::Intent(m) => self.intent = Some(m),
            PersistRecord::Sent(m) => {
                self.intent = None;
                self.sent.insert(m.counter(), m);
            }
            PersistRecord::Accepted(p) => {
                self.accepted.insert((p.header.view, p.header.n), p);
            }
            PersistRecord::View(v) => self.view = v,
            PersistRecord::NewViewAccepted(v) => self.new_view_accepted = v,
            PersistRecord::Lease(l) => self.lease = Some(l),
            PersistRecord::ViewCert(c) => {
                self.view_certs.insert(c.view_top.unwrap_or(0), c);
            }
            PersistRecord::Stable(cert) => {
                let own = self.sent.values().find_map(|m| match m {
                    UiMessage::Checkpoint(c) if c.n == cert.n => Some(c.ui.counter),
                    _ => None,
                });
                if let Some(c) = own {
                    self.sent = self.sent.split_off(&c);
                }
                self.accepted.retain(|(_, n), _| *n > cert.n);
                self.stable = cert;
            }
        }
    }

    /// The counter of the newest own UI message logged (0 if none).
    pub fn last_sent_counter(&self) -> u64 {
        self.sent.keys().next_back().copied().unwrap_or(0)
    }

    /// The records that say the same thing, for rewriting a log compactly.
    pub fn records(&self) -> Vec<PersistRecord> {
        let mut out = vec![
            PersistRecord::Stable(self.stable.clone()),
            PersistRecord::View(self.view),
            PersistRecord::NewViewAccepted(self.new_view_accepted),
        ];
        out.extend(
            self.view_certs
                .values()
                .cloned()
                .map(PersistRecord::ViewCert),
        );
        out.extend(self.sent.values().cloned().map(PersistRecord::Sent));
        out.extend(self.intent.clone().map(PersistRecord::Intent));
        out.extend(self.lease.clone().map(PersistRecord::Lease));
        out.extend(self.accepted.values().cloned().map(PersistRecord::Accepted));
        out
    }

    /// What a restart starts from, given the client table of the stable checkpoint's
    /// snapshot and the USIG's last counter.
    pub fn recovered(&self, core_state: CoreState, usig_counter: u64) -> Recovered {
        Recovered {
            view: self.view,
            stable: self.stable.clone(),
            sent: self.sent.values().cloned().collect(),
            accepted: self
                .accepted
                .values()
                .filter(|p| p.header.n > self.stable.n)
                .cloned()
                .collect(),
            core_state,
            usig_counter,
            new_view_accepted: self.new_view_accepted,
            view_certs: self.view_certs.values().cloned().collect(),
        }
    }
}
