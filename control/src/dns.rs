//! DNS: publication by RFC 2136 dynamic update signed with TSIG (HMAC-SHA256), over
//! TCP to the zone's primary; resolution of TXT records with hickory-resolver through
//! any recursive (or authoritative) resolver.
//!
//! A publication replaces the whole TXT RRset at a name in one UPDATE (delete the
//! RRset, add the new records), so readers never see old and new chunks mixed for
//! longer than their TTL. Transient failures (connection refused, timeouts) are
//! retried with backoff; a refusal by the server (NOTAUTH, REFUSED, ...) is reported
//! at once with what to check.

use anyhow::{bail, Context as _};
use hickory_proto::op::{Message, ResponseCode, UpdateMessage as _};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordType, TSigner};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where and how to publish and resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The zone's primary, which accepts signed updates.
    pub server: SocketAddr,
    /// The zone records are published in (e.g. `pd.test`).
    pub zone: String,
    /// The TSIG key's name.
    pub key_name: String,
    /// The TSIG secret (raw bytes).
    pub secret: Vec<u8>,
    /// The resolver records are read through.
    pub resolver: SocketAddr,
}

/// Backoff between attempts of a publication.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(3),
];
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// TTL of published records.
pub const TTL: u32 = 60;

fn name(s: &str) -> anyhow::Result<Name> {
    let mut n = Name::from_ascii(s).with_context(|| format!("{s:?} is not a DNS name"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// The UPDATE that replaces the TXT RRset at `owner` by `records` (each a list of
/// character strings), signed with TSIG at `now`.
pub fn update_message(
    cfg: &DnsConfig,
    owner: &str,
    records: &[Vec<String>],
    now: u64,
) -> anyhow::Result<Vec<u8>> {
    let zone = name(&cfg.zone)?;
    let owner = name(owner)?;
    if !zone.zone_of(&owner) {
        bail!("{owner} is not inside the zone {zone}: publish under the zone the server is primary for");
    }
    let old = Record::from_rdata(owner.clone(), 0, RData::TXT(TXT::new(Vec::new())));
    let mut msg = hickory_proto::op::update_message::delete_rrset(old, zone, false);
    msg.metadata.id = rand_id();
    for r in records {
        msg.add_update(Record::from_rdata(
            owner.clone(),
            TTL,
            RData::TXT(TXT::new(r.clone())),
        ));
    }
    let signer = TSigner::new(
        cfg.secret.clone(),
        TsigAlgorithm::HmacSha256,
        name(&cfg.key_name)?,
        300,
    )
    .map_err(|e| anyhow::anyhow!("TSIG key {}: {e}", cfg.key_name))?;
    let (tsig, _) = signer
        .sign_message(&msg, now)
        .map_err(|e| anyhow::anyhow!("signing the update: {e}"))?;
    msg.set_signature(tsig);
    msg.to_vec()
        .map_err(|e| anyhow::anyhow!("encoding the update: {e}"))
}

fn rand_id() -> u16 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

/// Why one attempt failed: worth retrying or not.
enum Attempt {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

fn exchange_tcp(server: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, Attempt> {
    let io =
        |what: &str, e: std::io::Error| Attempt::Retry(anyhow::anyhow!("{what} {server}: {e}"));
    let mut s =
        TcpStream::connect_timeout(&server, IO_TIMEOUT).map_err(|e| io("connecting to", e))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| io("configuring", e))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| io("configuring", e))?;
    let len = u16::try_from(msg.len())
        .map_err(|_| Attempt::Fatal(anyhow::anyhow!("the update is larger than 64 KiB")))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).map_err(|e| io("writing to", e))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| io("reading from", e))?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut answer)
        .map_err(|e| io("reading from", e))?;
    Ok(answer)
}

/// Replaces the TXT records at `owner`, retrying transient failures with backoff.
pub fn publish(
    cfg: &DnsConfig,
    owner: &str,
    records: &[Vec<String>],
    now: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let mut last = None;
    for (i, pause) in std::iter::once(Duration::ZERO).chain(BACKOFF).enumerate() {
        std::thread::sleep(pause);
        let msg = update_message(cfg, owner, records, now())?;
        let answer = match exchange_tcp(cfg.server, &msg) {
            Ok(a) => a,
            Err(Attempt::Retry(e)) => {
                tracing::warn!("publishing {owner}: attempt {}: {e:#}", i + 1);
                last = Some(e);
                continue;
            }
            Err(Attempt::Fatal(e)) => return Err(e),
        };
        let reply = Message::from_vec(&answer)
            .map_err(|e| anyhow::anyhow!("the server's answer is not DNS: {e}"))?;
        return match reply.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NotAuth => bail!(
                "{} refused the update of {owner} (NOTAUTH): check the TSIG key name {:?} and its secret, and that the zone's ACL lets this key update this name (a per-device key may update only its own device's names)",
                cfg.server, cfg.key_name
            ),
            ResponseCode::Refused => bail!(
                "{} refused the update of {owner} (REFUSED): is it the primary for {}, and does its ACL allow the key {:?}?",
                cfg.server, cfg.zone, cfg.key_name
            ),
            ResponseCode::NotZone => bail!("{owner} is not in the zone {} on {} (NOTZONE)", cfg.zone, cfg.server),
            other => bail!("{} answered the update of {owner} with {other}", cfg.server),
        };
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).with_context(|| {
        format!(
            "publishing {owner} to {} failed after {} attempts",
            cfg.server,
            BACKOFF.len() + 1
        )
    })
}

/// The TXT records at `owner` through the configured resolver (each as its list of
/// strings); `None` when the name has none.
pub fn resolve_txt(cfg: &DnsConfig, owner: &str) -> anyhow::Result<Option<Vec<Vec<String>>>> {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut ns = NameServerConfig::udp_and_tcp(cfg.resolver.ip());
    for c in &mut ns.connections {
        c.port = cfg.resolver.port();
    }
    let _ = ConnectionConfig::udp;
    let mut opts = ResolverOpts::default();
    // Records change when their owner republishes: no cache beyond this lookup.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the resolver's runtime")?;
    let owner_name = name(owner)?;
    rt.block_on(async move {
        let mut b = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        *b.options_mut() = opts;
        let resolver = b.build().map_err(|e| anyhow::anyhow!("resolver: {e}"))?;
        match resolver.lookup(owner_name, RecordType::TXT).await {
            Ok(lookup) => {
                let mut out = Vec::new();
                for r in lookup.answers() {
                    if let RData::TXT(txt) = &r.data {
                        out.push(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect(),
                        );
                    }
                }
                Ok((!out.is_empty()).then_some(out))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "resolving {owner} through {}: {e}",
                cfg.resolver
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DnsConfig {
        DnsConfig {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: "pd.test".into(),
            key_name: "pd-key".into(),
            secret: vec![7; 32],
            resolver: "127.0.0.1:53".parse().unwrap(),
        }
    }

    #[test]
    fn an_update_replaces_the_rrset_and_is_signed() {
        let recs = vec![
            vec!["pd1 1/1 abc".to_owned()],
            vec!["pd1".to_owned(), "x".to_owned()],
        ];
        let bytes =
            update_message(&cfg(), "_portdistrict.alice.pd.test", &recs, 1_800_000_000).unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.op_code, hickory_proto::op::OpCode::Update);
        // Zone section: the zone's SOA; update section: delete RRset + the records.
        assert_eq!(m.queries[0].name().to_ascii(), "pd.test.");
        assert_eq!(m.authorities.len(), 3);
        assert_eq!(m.authorities[0].dns_class, hickory_proto::rr::DNSClass::ANY);
        assert!(m.signature().is_some(), "TSIG-signed");
    }

    #[test]
    fn names_outside_the_zone_are_refused() {
        let e = update_message(&cfg(), "_portdistrict.alice.example.org", &[], 1).unwrap_err();
        assert!(e.to_string().contains("not inside the zone"), "{e}");
    }

    #[test]
    fn an_unreachable_server_is_retried_then_reported() {
        // A closed port on loopback: connection refused on every attempt.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = cfg();
        c.server = SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = std::time::Instant::now();
        let e = publish(&c, "_portdistrict.alice.pd.test", &[], || 1).unwrap_err();
        assert!(format!("{e:#}").contains("after 4 attempts"), "{e:#}");
        assert!(t0.elapsed() >= Duration::from_secs(4), "with backoff");
    }
}
