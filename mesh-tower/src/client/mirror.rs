//! The mirror stage: copies of a request to the route's shadow clusters, fire-and-forget,
//! with bounded concurrency (beyond the bound a copy is skipped, never queued).

use std::sync::Arc;

use http_body_util::BodyExt;
use mesh_core::MeshSnapshot;
use mesh_core::route::MirrorPolicy;

use super::Shared;
use super::upstream::{Head, replay_body};
use crate::body::Prepared;
use crate::connector::MeshConnector;
use crate::protocol::shadow_authority;

impl<C: MeshConnector> Shared<C> {
    /// Sends copies of a request whose body was kept to each mirror cluster that samples it.
    pub(super) fn mirror(
        &self,
        snap: &Arc<MeshSnapshot>,
        mirrors: &[MirrorPolicy],
        head: &Head,
        body: &Prepared,
        rng: &mut impl rand::RngCore,
    ) {
        let Prepared::Replayable { data, trailers } = body else {
            return;
        };
        for m in mirrors {
            if !m.fraction.sample(rng) {
                continue;
            }
            let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
                continue;
            };
            let Some(state) = self.cluster(snap, &m.cluster) else {
                continue;
            };
            let Some(i) = state.pick(None, &[], rng) else {
                continue;
            };
            let h2 = head.wants_h2();
            let shadow = shadow_authority(&head.authority);
            let req = head.build(replay_body(data.clone(), trailers.clone()), Some(&shadow));
            let pool = state.pools[i].clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(resp) = pool.send(req, h2).await {
                    // Drained so that the connection can be reused.
                    let _ = resp.into_body().collect().await;
                }
            });
        }
    }
}
