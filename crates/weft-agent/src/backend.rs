//! The backend task: owns the persisted state, runs the control client, feeds the engine
//! and publishes [`Status`] for the LocalAPI. It reacts to LocalAPI commands, control events
//! and engine status changes; nothing else mutates agent state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use weft_key::{DiscoPrivate, NodePrivate, NodePublic};
use weft_magicsock::Path;
use weft_netmap::{short_name, NetworkMap};
use weft_tailcfg::Node;

use crate::control::{self, ControlEvent, ControlParams, LiteInputs};
use crate::engine::{EngineCmd, EngineStatus};
use crate::localapi::{
    ApiCommand, BackendState, LockStatus, NetcheckReport, PeerStatus, PingRequest, PingResult,
    RouteStatus, Status, UpRequest,
};
use crate::routes::{self, Router};
use crate::state::{AgentState, StateStore};
use crate::sys::Tun;

/// Default per-ping timeout when the request names none.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `netcheck` waits for a STUN round.
const NETCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the backend task needs.
pub(crate) struct Backend {
    pub(crate) store: StateStore,
    pub(crate) state: AgentState,
    pub(crate) disco: DiscoPrivate,
    pub(crate) backend_log_id: String,
    pub(crate) status_tx: watch::Sender<Status>,
    pub(crate) engine_cmds: mpsc::Sender<EngineCmd>,
    pub(crate) engine_status: watch::Receiver<EngineStatus>,
    pub(crate) tun: Option<Tun>,
    /// Forwarding, SNAT and kernel routes (only with a TUN device).
    pub(crate) router: Option<Router>,
    /// Routes served now (advertised while running), for the engine's filter.
    pub(crate) served: Vec<ipnet::IpNet>,
    pub(crate) control: Option<tokio::task::JoinHandle<()>>,
    pub(crate) control_gen: u64,
    pub(crate) lite: Arc<watch::Sender<LiteInputs>>,
    pub(crate) netmap: Option<Box<NetworkMap>>,
    pub(crate) auth_url: String,
    pub(crate) health: Vec<String>,
    pub(crate) logged_in: bool,
}

type CtlMsg = (u64, ControlEvent);

/// Aborts a task when dropped (so aborting the owner stops the child too).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_control();
    }
}

impl Backend {
    pub(crate) async fn run(mut self, mut api: mpsc::Receiver<ApiCommand>) {
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<CtlMsg>(64);
        self.refresh_lite();
        if self.state.prefs.want_running
            && self.state.node.is_some()
            && self.state.prefs.control_url.is_some()
        {
            self.logged_in = self.state.profile.is_some();
            self.start_control(None, &ctl_tx);
            if let (true, Some(node)) = (self.logged_in, self.state.node.clone()) {
                let _ = self.engine_cmds.send(EngineCmd::SetKey(Some(node))).await;
            }
            self.apply_routes().await;
        }
        self.publish();
        loop {
            tokio::select! {
                cmd = api.recv() => match cmd {
                    Some(c) => self.on_api(c, &ctl_tx).await,
                    None => return,
                },
                Some((gen, ev)) = ctl_rx.recv() => {
                    if gen == self.control_gen && self.control.is_some() {
                        self.on_control(ev).await;
                    }
                }
                changed = self.engine_status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.on_engine_status();
                }
            }
            self.publish();
        }
    }

    async fn on_api(&mut self, cmd: ApiCommand, ctl_tx: &mpsc::Sender<CtlMsg>) {
        match cmd {
            ApiCommand::Up(req, reply) => {
                let _ = reply.send(self.up(req, ctl_tx).await);
            }
            ApiCommand::Down(reply) => {
                self.stop_control();
                self.state.prefs.want_running = false;
                let r = self.save();
                let _ = self.engine_cmds.send(EngineCmd::SetKey(None)).await;
                self.netmap = None;
                self.clear_tun().await;
                self.apply_routes().await;
                let _ = reply.send(r);
            }
            ApiCommand::Logout(reply) => {
                let _ = reply.send(self.logout().await);
            }
            ApiCommand::Ping(req, reply) => {
                let fut = self.ping(req);
                tokio::spawn(async move {
                    let _ = reply.send(fut.await);
                });
            }
            ApiCommand::Netcheck(reply) => {
                let (tx, rx) = oneshot::channel();
                let codes = self.region_codes();
                let sent = self.engine_cmds.send(EngineCmd::Netcheck(tx)).await.is_ok();
                let derp = self.engine_status.borrow().derp_connected.clone();
                tokio::spawn(async move {
                    if !sent {
                        let _ = reply.send(Err("engine is gone".into()));
                        return;
                    }
                    let report = tokio::time::timeout(NETCHECK_TIMEOUT, rx)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    let _ = reply.send(Ok(netcheck_report(report, codes, &derp)));
                });
            }
        }
    }

    async fn up(&mut self, req: UpRequest, ctl_tx: &mpsc::Sender<CtlMsg>) -> Result<(), String> {
        let advertise_routes = match &req.advertise_routes {
            Some(r) => {
                r.iter().try_for_each(routes::check_route)?;
                let set: std::collections::BTreeSet<_> = r.iter().copied().collect();
                Some(set.into_iter().collect::<Vec<_>>())
            }
            None => None,
        };
        let url = if req.login_server.is_empty() {
            self.state.prefs.control_url.clone()
        } else {
            Some(req.login_server.trim_end_matches('/').to_owned())
        };
        let Some(url) = url else {
            return Err("no control server known; pass --login-server URL".into());
        };
        if self
            .state
            .prefs
            .control_url
            .as_deref()
            .is_some_and(|u| u != url)
        {
            tracing::info!(%url, "control server changed; starting a fresh login");
            self.state.node = None;
            self.state.old_node = NodePublic::default();
            self.state.profile = None;
            self.logged_in = false;
        }
        self.state.prefs.control_url = Some(url);
        if !req.hostname.is_empty() {
            self.state.prefs.hostname = Some(req.hostname);
        }
        if !req.advertise_tags.is_empty() {
            self.state.prefs.advertise_tags = req.advertise_tags;
        }
        if let Some(r) = advertise_routes {
            self.state.prefs.advertise_routes = r;
        }
        if let Some(e) = req.advertise_exit_node {
            self.state.prefs.advertise_exit_node = e;
        }
        let accept_changed = req
            .accept_routes
            .is_some_and(|a| a != self.state.prefs.accept_routes);
        if let Some(a) = req.accept_routes {
            self.state.prefs.accept_routes = a;
        }
        self.state.prefs.want_running = true;
        if self.state.node.is_none() {
            self.state.node = Some(NodePrivate::generate());
            self.logged_in = false;
        }
        self.save()?;
        self.refresh_lite();
        if accept_changed {
            if let Some(nm) = &self.netmap {
                let enm = routes::engine_netmap(nm, self.state.prefs.accept_routes);
                let _ = self
                    .engine_cmds
                    .send(EngineCmd::SetNetmap(Box::new(enm)))
                    .await;
            }
        }
        self.apply_routes().await;
        let auth_key = (!req.auth_key.is_empty()).then_some(req.auth_key);
        let expired = self.netmap.as_ref().is_some_and(|nm| nm.self_expired);
        if self.control.is_some() && auth_key.is_none() && self.logged_in && !expired {
            return Ok(());
        }
        if expired {
            tracing::info!("node key expired; logging in again with a new key");
            self.logged_in = false;
            self.netmap = None;
        }
        self.start_control_with(auth_key, expired, ctl_tx);
        if self.logged_in {
            if let Some(node) = self.state.node.clone() {
                let _ = self.engine_cmds.send(EngineCmd::SetKey(Some(node))).await;
            }
        }
        Ok(())
    }

    async fn logout(&mut self) -> Result<(), String> {
        self.stop_control();
        let mut result = Ok(());
        if let (Some(url), Some(node)) = (
            self.state.prefs.control_url.clone(),
            self.state.node.clone(),
        ) {
            if let Err(e) = control::logout(
                &url,
                &self.state.machine,
                self.state.nl.public(),
                &node,
                self.state.old_node,
            )
            .await
            {
                result = Err(format!("logging out at control: {e}"));
            }
        }
        self.state.node = None;
        self.state.old_node = NodePublic::default();
        self.state.profile = None;
        self.state.prefs.want_running = false;
        self.logged_in = false;
        self.netmap = None;
        self.clear_tun().await;
        self.apply_routes().await;
        self.auth_url.clear();
        let _ = self.engine_cmds.send(EngineCmd::SetKey(None)).await;
        self.save()?;
        result
    }

    fn ping(
        &self,
        req: PingRequest,
    ) -> impl std::future::Future<Output = Result<PingResult, String>> + use<> {
        let timeout = if req.timeout_ms == 0 {
            PING_TIMEOUT
        } else {
            Duration::from_millis(req.timeout_ms)
        };
        let found = self.netmap.as_ref().and_then(|nm| {
            let p = nm.find_peer(&req.peer)?;
            Some((p.clone(), self.region_codes()))
        });
        let cmds = self.engine_cmds.clone();
        let query = req.peer;
        async move {
            let Some((peer, codes)) = found else {
                return Err(format!("no matching peer for {query:?}"));
            };
            let ip = peer
                .addresses
                .first()
                .map(|a| a.addr().to_string())
                .unwrap_or_default();
            let mut r = PingResult {
                ip: ip.clone(),
                node_name: short_name(&peer).to_owned(),
                ..PingResult::default()
            };
            let (tx, rx) = oneshot::channel();
            cmds.send(EngineCmd::Ping(peer.key, tx))
                .await
                .map_err(|_| "engine is gone".to_owned())?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok((via, latency)))) => {
                    r.latency_seconds = latency.as_secs_f64();
                    match via {
                        Path::Direct(addr) => r.endpoint = addr.to_string(),
                        Path::Derp(region) => {
                            r.derp_region_id = region;
                            r.derp_region_code = codes
                                .get(&region)
                                .cloned()
                                .unwrap_or_else(|| region.to_string());
                        }
                        Path::None => {}
                    }
                }
                Ok(Ok(Err(e))) => r.err = e,
                Ok(Err(_)) => r.err = "engine dropped the ping".into(),
                Err(_) => r.err = format!("ping {ip:?} timed out"),
            }
            Ok(r)
        }
    }

    async fn on_control(&mut self, ev: ControlEvent) {
        match ev {
            ControlEvent::AuthUrl(u) => {
                self.auth_url = u;
            }
            ControlEvent::LoggedIn {
                node,
                old_node,
                profile,
            } => {
                self.auth_url.clear();
                self.health.clear();
                self.logged_in = true;
                self.state.node = Some(node.clone());
                self.state.old_node = old_node;
                self.state.profile = Some(profile);
                if let Err(e) = self.save() {
                    self.health = vec![e];
                }
                let _ = self.engine_cmds.send(EngineCmd::SetKey(Some(node))).await;
            }
            ControlEvent::NetMap(nm) => {
                if nm.self_expired {
                    self.health = vec!["node key expired; run `weft up` to log in again".into()];
                }
                if let Some(tun) = self.tun.as_mut() {
                    if let Err(e) = tun.set_addresses(nm.addresses()).await {
                        tracing::warn!(error = %e, "configuring TUN addresses failed");
                        self.health = vec![format!("configuring {}: {e}", tun.name())];
                    }
                }
                let enm = routes::engine_netmap(&nm, self.state.prefs.accept_routes);
                let _ = self
                    .engine_cmds
                    .send(EngineCmd::SetNetmap(Box::new(enm)))
                    .await;
                self.netmap = Some(nm);
                self.apply_accepted_routes().await;
            }
            ControlEvent::Error(e) => {
                self.health = vec![e];
            }
            ControlEvent::Connected(up) => {
                if up {
                    self.health.clear();
                }
            }
        }
    }

    fn on_engine_status(&mut self) {
        let s = self.engine_status.borrow_and_update().clone();
        let endpoints = s.endpoints.clone();
        let preferred = s.home_derp;
        let report = s.net_report.clone();
        self.lite.send_if_modified(|i| {
            let mut next = i.clone();
            next.endpoints = endpoints;
            let mut ni = serde_json::Map::new();
            ni.insert(
                "PreferredDERP".into(),
                serde_json::json!(preferred.unwrap_or(0)),
            );
            if let Some(r) = &report {
                ni.insert("WorkingUDP".into(), serde_json::json!(r.udp));
                if let Some(v) = r.mapping_varies_by_dest_ip {
                    ni.insert("MappingVariesByDestIP".into(), serde_json::json!(v));
                }
                let lat: serde_json::Map<String, serde_json::Value> = r
                    .region_latency
                    .iter()
                    .map(|(k, v)| (format!("{k}-v4"), serde_json::json!(v.as_secs_f64())))
                    .collect();
                ni.insert("DERPLatency".into(), serde_json::Value::Object(lat));
            }
            next.hostinfo.set("NetInfo", serde_json::Value::Object(ni));
            if next == *i {
                return false;
            }
            *i = next;
            true
        });
    }

    fn start_control(&mut self, auth_key: Option<String>, ctl_tx: &mpsc::Sender<CtlMsg>) {
        self.start_control_with(auth_key, false, ctl_tx);
    }

    fn start_control_with(
        &mut self,
        auth_key: Option<String>,
        regen: bool,
        ctl_tx: &mpsc::Sender<CtlMsg>,
    ) {
        self.stop_control();
        self.health.clear();
        self.auth_url.clear();
        let (Some(url), Some(node)) = (
            self.state.prefs.control_url.clone(),
            self.state.node.clone(),
        ) else {
            return;
        };
        self.control_gen += 1;
        let gen = self.control_gen;
        let params = ControlParams {
            control_url: url,
            machine: self.state.machine.clone(),
            nl_public: self.state.nl.public(),
            node,
            old_node: self.state.old_node,
            auth_key,
            regen,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let fwd = ctl_tx.clone();
        let inputs = self.lite.subscribe();
        let task = tokio::spawn(async move {
            let _client = AbortOnDrop(tokio::spawn(control::run(params, inputs, tx)));
            while let Some(ev) = rx.recv().await {
                if fwd.send((gen, ev)).await.is_err() {
                    break;
                }
            }
        });
        self.control = Some(task);
    }

    /// What we advertise: routes plus exit routes (empty unless the data plane should run).
    fn advertised(&self) -> Vec<ipnet::IpNet> {
        routes::advertised(
            &self.state.prefs.advertise_routes,
            self.state.prefs.advertise_exit_node,
        )
    }

    /// Brings the filter's local routes, forwarding/SNAT and kernel routes in line with the
    /// prefs: all of them while the data plane should run, none otherwise.
    async fn apply_routes(&mut self) {
        let serve = if self.state.prefs.want_running {
            self.advertised()
        } else {
            Vec::new()
        };
        self.served = serve.clone();
        if let Some(r) = self.router.as_mut() {
            if let Err(e) = r.set_advertised(&serve).await {
                tracing::warn!(error = %e, "serving subnet routes failed");
                self.health = vec![format!("subnet routes: {e}")];
            }
        }
        self.apply_accepted_routes().await;
    }

    /// Routes peers' subnets into the TUN when `--accept-routes` is on (and running).
    async fn apply_accepted_routes(&mut self) {
        let want = if self.state.prefs.want_running {
            routes::accepted_routes(
                self.netmap.as_deref(),
                self.state.prefs.accept_routes,
                &self.state.prefs.advertise_routes,
            )
        } else {
            Default::default()
        };
        if let Some(r) = self.router.as_mut() {
            if let Err(e) = r.set_accepted(&want).await {
                self.health = vec![format!("subnet routes: {e}")];
            }
        }
        let _ = self
            .engine_cmds
            .send(EngineCmd::SetRoutes {
                local: self.served.clone(),
                via_tun: want.into_iter().collect(),
            })
            .await;
    }

    async fn clear_tun(&mut self) {
        if let Some(tun) = self.tun.as_mut() {
            if let Err(e) = tun.set_addresses(&[]).await {
                tracing::debug!(error = %e, "removing TUN addresses failed");
            }
        }
    }

    fn stop_control(&mut self) {
        if let Some(t) = self.control.take() {
            t.abort();
        }
    }

    fn save(&self) -> Result<(), String> {
        self.store.save(&self.state).map_err(|e| e.to_string())
    }

    fn refresh_lite(&self) {
        let mut hi = self.lite.borrow().hostinfo.clone();
        hi.set(
            "IPNVersion",
            serde_json::json!(concat!("weft-", env!("CARGO_PKG_VERSION"))),
        );
        hi.set("OS", serde_json::json!("linux"));
        hi.set("BackendLogID", serde_json::json!(self.backend_log_id));
        let name = self
            .state
            .prefs
            .hostname
            .clone()
            .unwrap_or_else(crate::sys::hostname);
        hi.set("Hostname", serde_json::json!(name));
        if self.state.prefs.advertise_tags.is_empty() {
            hi.0.remove("RequestTags");
        } else {
            hi.set(
                "RequestTags",
                serde_json::json!(self.state.prefs.advertise_tags),
            );
        }
        let advertised = self.advertised();
        if advertised.is_empty() {
            hi.0.remove("RoutableIPs");
        } else {
            hi.set("RoutableIPs", serde_json::json!(advertised));
        }
        let disco = self.disco.public();
        self.lite.send_if_modified(|i| {
            if i.hostinfo == hi && i.disco_key == disco {
                return false;
            }
            i.hostinfo = hi;
            i.disco_key = disco;
            true
        });
    }

    fn region_codes(&self) -> BTreeMap<u16, String> {
        self.netmap
            .as_ref()
            .map(|nm| {
                nm.derp_map
                    .regions
                    .values()
                    .filter_map(|r| Some((u16::try_from(r.region_id).ok()?, r.region_code.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn backend_state(&self) -> BackendState {
        if !self.state.prefs.want_running {
            return if self.state.node.is_some() && self.state.profile.is_some() {
                BackendState::Stopped
            } else if self.state.prefs.control_url.is_some() {
                BackendState::NeedsLogin
            } else {
                BackendState::NoState
            };
        }
        if !self.logged_in || !self.auth_url.is_empty() {
            return BackendState::NeedsLogin;
        }
        let Some(nm) = &self.netmap else {
            return BackendState::Starting;
        };
        if nm.self_expired {
            return BackendState::NeedsLogin;
        }
        if !nm.self_node.machine_authorized {
            return BackendState::NeedsMachineAuth;
        }
        BackendState::Running
    }

    fn publish(&self) {
        let engine = self.engine_status.borrow().clone();
        let mut next = Status {
            version: 0,
            backend_state: self.backend_state(),
            auth_url: self.auth_url.clone(),
            health: self.health.clone(),
            control_url: self.state.prefs.control_url.clone().unwrap_or_default(),
            data_plane: engine.counters,
            routes: RouteStatus {
                advertised: self.advertised(),
                exit_node: self.state.prefs.advertise_exit_node,
                accept_routes: self.state.prefs.accept_routes,
                installed: self
                    .router
                    .as_ref()
                    .map(|r| r.installed().iter().copied().collect())
                    .unwrap_or_default(),
            },
            tailnet_lock: LockStatus {
                // The CLI form Tailscale prints (`tlpub:`), not the wire form (`nlpub:`).
                nl_public: self
                    .state
                    .nl
                    .public()
                    .to_text()
                    .replacen("nlpub:", "tlpub:", 1),
                node_key: self
                    .state
                    .node
                    .as_ref()
                    .map(|k| k.public().to_text())
                    .unwrap_or_default(),
                ..LockStatus::default()
            },
            ..Status::default()
        };
        if let Some(tka) = self.netmap.as_ref().and_then(|nm| nm.tka.as_ref()) {
            let nm = self.netmap.as_ref().expect("checked");
            next.tailnet_lock.enabled = !tka.disabled;
            next.tailnet_lock.head = tka.head.clone();
            next.tailnet_lock.node_key_signed = nm
                .self_node
                .key_signature
                .as_ref()
                .is_some_and(|s| !s.is_empty());
        }
        if let Some(nm) = &self.netmap {
            if next.backend_state != BackendState::NeedsLogin || self.logged_in {
                let codes = self.region_codes();
                next.magic_dns_suffix = nm.magic_dns_suffix().to_owned();
                next.tailscale_ips = nm.addresses().iter().map(|a| a.addr()).collect();
                let mut me = node_status(&nm.self_node, &codes);
                me.os = "linux".into();
                next.self_ = Some(me);
                for p in &nm.peers {
                    let mut ps = node_status(p, &codes);
                    if let Some(e) = engine.peers.iter().find(|e| e.node_key == p.key) {
                        if let Path::Direct(a) = e.path {
                            ps.cur_addr = a.to_string();
                        }
                        ps.rx_bytes = e.wg.rx_bytes;
                        ps.tx_bytes = e.wg.tx_bytes;
                        if let Some(ago) = e.wg.since_handshake {
                            let at = std::time::SystemTime::now() - ago;
                            ps.last_handshake = weft_tailcfg::Time::from_system(at).to_string();
                        }
                    }
                    next.peer.insert(p.key.to_text(), ps);
                }
            }
        }
        self.status_tx.send_if_modified(|s| {
            next.version = s.version;
            if *s == next {
                return false;
            }
            next.version = s.version + 1;
            *s = next;
            true
        });
    }
}

fn node_status(n: &Node, codes: &BTreeMap<u16, String>) -> PeerStatus {
    PeerStatus {
        id: n.stable_id.clone(),
        public_key: n.key.to_text(),
        host_name: short_name(n).to_owned(),
        dns_name: n.name.clone(),
        os: n.hostinfo.os().unwrap_or_default().to_owned(),
        user_id: n.user,
        tailscale_ips: n.addresses.iter().map(|a| a.addr()).collect(),
        tags: n.tags.clone(),
        relay: u16::try_from(n.home_derp)
            .ok()
            .and_then(|r| codes.get(&r).cloned())
            .unwrap_or_default(),
        addrs: n.endpoints.iter().map(ToString::to_string).collect(),
        online: n.online.unwrap_or(false),
        key_expiry: if n.key_expiry.is_zero() {
            String::new()
        } else {
            n.key_expiry.to_string()
        },
        allowed_ips: n.allowed_ips.clone().unwrap_or_default(),
        primary_routes: n.primary_routes.clone(),
        exit_node_option: n.allowed_ips.iter().flatten().any(routes::is_exit_route),
        ..PeerStatus::default()
    }
}

fn netcheck_report(
    r: Option<weft_magicsock::NetReport>,
    codes: BTreeMap<u16, String>,
    _derp_connected: &[u16],
) -> NetcheckReport {
    let mut out = NetcheckReport {
        region_codes: codes,
        ..NetcheckReport::default()
    };
    let Some(r) = r else { return out };
    out.udp = r.udp;
    out.ipv4 = r.global_v4.is_some();
    out.global_v4 = r.global_v4.map(|a| a.to_string()).unwrap_or_default();
    out.mapping_varies_by_dest_ip = r.mapping_varies_by_dest_ip;
    out.preferred_derp = r.preferred_derp.unwrap_or(0);
    out.region_latency = r
        .region_latency
        .iter()
        .map(|(k, v)| (*k, v.as_secs_f64()))
        .collect();
    out
}
