//! Gossip: after a Hello exchange the side with the fresher CRL, directory
//! or membership log checkpoint pushes it; a trust change closes the
//! connections of peers that lost their label and is forwarded to the other
//! peers once; every new log head or split view the monitor takes is pushed
//! to the connected peers. Pushes go over pooled connections only.

use super::decide::still_member;
use super::{MeshNode, CLOSE_REVOKED};
use crate::log::SplitView;
use caliopen_proto::pb::mesh::{
    request, response, CheckpointPush, CrlPush, DirectoryPush, Hello, PushReply, Request, Response,
    SplitViewPush,
};
use std::sync::atomic::Ordering;

impl MeshNode {
    /// After a Hello exchange: the fresher side pushes.
    pub(super) fn push_if_fresher(&self, peer: &str, theirs: &Hello) {
        let st = self.inner.trust.current();
        if st.crl_number() > theirs.crl_number {
            if let Some(c) = &st.crl {
                self.spawn_push(peer.to_owned(), crl_push(c.number, &c.der));
            }
        }
        if st.directory_serial() > theirs.directory_serial {
            if let Some(d) = &st.directory {
                self.spawn_push(peer.to_owned(), directory_push(&d.signed));
            }
        }
        // The membership log: unlike a CRL, the staler side's checkpoint
        // is news too (a fork where one side is ahead is seen only by the
        // side whose tiles prove the other's head is not a prefix), so each
        // side sends its own when the heads differ. A held split-view proof
        // goes to every peer.
        if let Some(log) = self.inner.log.get() {
            if let Some(held) = log.held() {
                let same = theirs.log_size == held.checkpoint.size
                    && theirs.log_root == held.checkpoint.root;
                if !same {
                    self.spawn_push(peer.to_owned(), checkpoint_push(&held.note));
                }
            }
            if let Some(sv) = log.split_view() {
                self.spawn_push(peer.to_owned(), split_view_push(&sv));
            }
        }
    }

    fn spawn_push(&self, peer: String, req: Request) {
        let node = self.clone();
        self.inner.stats.gossip_sent.fetch_add(1, Ordering::Relaxed);
        self.inner.tracker.spawn(async move {
            if let Err(e) = node.request_connected(&peer, req).await {
                tracing::debug!(peer, error = %e, "gossip push failed");
            }
        });
    }

    /// Reacts to trust changes: closes connections of peers that lost their
    /// label, and forwards the newer CRL or directory to the other peers once.
    pub(super) async fn trust_loop(self) {
        let mut rx = self.inner.trust.subscribe();
        let mut last_crl = rx.borrow().crl_number;
        let mut last_dir = rx.borrow().directory_serial;
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = self.inner.token.cancelled() => break,
            }
            let change = rx.borrow_and_update().clone();
            let st = self.inner.trust.current();
            // Enforce first.
            let doomed: Vec<String> = self
                .lock_peers()
                .iter()
                .filter(|(_, p)| !still_member(&st, &p.identity))
                .map(|(m, _)| m.clone())
                .collect();
            for m in doomed {
                tracing::warn!(peer = %m, "closing the connection of a peer that lost its label");
                self.inner
                    .stats
                    .closed_revoked
                    .fetch_add(1, Ordering::Relaxed);
                self.close_peer(&m, CLOSE_REVOKED, b"revoked");
            }
            // Then gossip what is new to everyone but its source.
            let mut pushes = Vec::new();
            if change.crl_number > last_crl {
                last_crl = change.crl_number;
                if let Some(c) = &st.crl {
                    pushes.push(crl_push(c.number, &c.der));
                }
            }
            if change.directory_serial > last_dir {
                last_dir = change.directory_serial;
                if let Some(d) = &st.directory {
                    pushes.push(directory_push(&d.signed));
                }
            }
            for peer in self.connected_peers() {
                if change.source.as_deref() == Some(peer.as_str()) {
                    continue;
                }
                for p in &pushes {
                    self.spawn_push(peer.clone(), p.clone());
                }
            }
        }
    }

    /// Pushes every new head and a split view the log monitor takes to the
    /// connected peers, except the one it came from.
    pub(super) async fn log_loop(self) {
        let Some(log) = self.inner.log.get().cloned() else {
            return;
        };
        let mut rx = log.subscribe();
        let (mut last_head, mut last_split) = {
            let c = rx.borrow();
            ((c.size, c.root), c.split_view)
        };
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = self.inner.token.cancelled() => break,
            }
            let change = rx.borrow_and_update().clone();
            let mut head = None;
            if (change.size, change.root) != last_head {
                last_head = (change.size, change.root);
                head = log.held().map(|h| checkpoint_push(&h.note));
            }
            // A split-view proof goes to every peer, its source included:
            // the member that showed us the other checkpoint may not be
            // able to prove the split itself.
            let mut split = None;
            if change.split_view && !last_split {
                split = log.split_view().map(|sv| split_view_push(&sv));
            }
            last_split = change.split_view;
            for peer in self.connected_peers() {
                if let Some(p) = &split {
                    self.spawn_push(peer.clone(), p.clone());
                }
                if change.source.as_deref() == Some(peer.as_str()) {
                    continue;
                }
                if let Some(p) = &head {
                    self.spawn_push(peer.clone(), p.clone());
                }
            }
        }
    }
}

fn crl_push(number: u64, der: &[u8]) -> Request {
    Request {
        body: Some(request::Body::CrlPush(CrlPush {
            crl_number: number,
            crl_der: der.to_vec(),
        })),
    }
}

fn directory_push(signed: &caliopen_proto::pb::directory::SignedDirectory) -> Request {
    Request {
        body: Some(request::Body::DirectoryPush(DirectoryPush {
            directory: Some(signed.clone()),
        })),
    }
}

fn checkpoint_push(note: &str) -> Request {
    Request {
        body: Some(request::Body::CheckpointPush(CheckpointPush {
            note: note.to_owned(),
        })),
    }
}

fn split_view_push(sv: &SplitView) -> Request {
    Request {
        body: Some(request::Body::SplitViewPush(SplitViewPush {
            first_note: sv.first.clone(),
            second_note: sv.second.clone(),
            proof: sv.proof.iter().map(|h| h.to_vec()).collect(),
        })),
    }
}

pub(super) fn push_reply(r: Result<bool, String>) -> Response {
    let reply = match r {
        Ok(accepted) => PushReply {
            accepted,
            detail: String::new(),
        },
        Err(detail) => PushReply {
            accepted: false,
            detail,
        },
    };
    Response {
        body: Some(response::Body::Push(reply)),
    }
}
