//! The mirror stage: copies of a request to the route's shadow clusters, fire-and-forget,
//! with bounded concurrency (beyond the bound a copy is skipped, never queued). A copy's body
//! follows what the request's attempts read; it ends at the route's timeout (15 s without
//! one), so a hung shadow gives its place back.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::MeshSnapshot;
use mesh_core::route::MirrorPolicy;

use super::Shared;
use super::upstream::Head;
use crate::body::{DISCARD_LIMIT, RequestBody, discard};
use crate::connector::MeshConnector;
use crate::pool::Held;
use crate::protocol::shadow_authority;

/// How long a copy may take when its route has no timeout.
const DEFAULT_SHADOW_TIMEOUT: Duration = Duration::from_secs(15);

impl<C: MeshConnector> Shared<C> {
    /// Sends copies of a request to each mirror cluster that samples it.
    pub(super) fn mirror(
        &self,
        snap: &Arc<MeshSnapshot>,
        mirrors: &[MirrorPolicy],
        head: &Head,
        body: &RequestBody,
        timeout: Option<Duration>,
        rng: &mut impl rand::RngCore,
    ) {
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
            let Some(copy) = body.mirror() else {
                continue;
            };
            let h2 = head.wants_h2();
            let shadow = shadow_authority(&head.authority);
            let req = head.build(copy, Some(&shadow));
            let pool = state.pools[i].clone();
            let limit = timeout.unwrap_or(DEFAULT_SHADOW_TIMEOUT);
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(limit, async {
                    if let Ok(resp) = pool.send(req, h2, Held::default()).await {
                        discard(resp.into_body(), DISCARD_LIMIT).await;
                    }
                })
                .await;
            });
        }
    }
}
