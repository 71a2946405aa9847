//! `cargo xtask setup`'s fetch of a peer that this machine's Debian does not ship in a
//! current build: Debian 13 (trixie)'s `wireguard-go`, for pd-bench's
//! `wireguard-go-deb13` column (Debian 12's is the 2022 release, without the TUN
//! TSO/GRO and UDP GSO/GRO that wireguard-go has had since 2023).
//!
//! apt does the fetching (it checks the archive's signature against Debian's keyring)
//! with a source list, package lists, archive cache and dpkg status of its own, all in
//! the bench cache ([`portdistrict_testkit::bench_cache`]): `apt-get update` and
//! `apt-get download`, then `dpkg-deb -x` into the cache. Nothing is installed, and
//! the machine's apt sources and lists are not touched (its `apt.conf.d`, e.g. a
//! proxy, still applies). The mirror is the first Debian one in the machine's own
//! sources, else `deb.debian.org`. Skipped when the cache already holds the package.

use crate::proc::{capture, cmd, output, which};
use anyhow::{bail, Context as _, Result};
use portdistrict_testkit::bench_cache::CachedPeer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The mirror when the machine's sources name none.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The keys that sign Debian's archive (Debian 12's package holds Debian 13's too).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The machine's apt sources, read to find its Debian mirror.
const HOST_SOURCES: &str = "/etc/apt/sources.list";
const HOST_SOURCE_PARTS: &str = "/etc/apt/sources.list.d";
/// Upper bound for `apt-get update` (one ~10 MB Packages index) and for the download.
const APT_LIMIT: Duration = Duration::from_secs(10 * 60);
/// Upper bound for `dpkg-deb` and `--version`.
const QUICK_LIMIT: Duration = Duration::from_secs(60);

/// The Debian version of `peer` in the cache, fetched unless it is there already; `Err`
/// says why it could not be fetched (for setup's warning).
pub(crate) fn ensure(peer: &CachedPeer) -> Result<String, String> {
    if let Some(version) = peer.cached_version() {
        println!(
            "setup: {} cached ({})",
            peer.label(&version),
            peer.binary().display()
        );
        return Ok(version);
    }
    match fetch(peer) {
        Ok(version) => {
            println!(
                "setup: fetched {} into {}",
                peer.label(&version),
                peer.binary().display()
            );
            Ok(version)
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

fn fetch(peer: &CachedPeer) -> Result<String> {
    for tool in ["apt-get", "dpkg-deb"] {
        if which(tool).is_none() {
            bail!("there is no {tool} (a Debian system is needed)");
        }
    }
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing (apt-get install debian-archive-keyring)");
    }
    let mirror = debian_mirror(&host_sources());
    println!(
        "setup: fetching {} from Debian {} ({}) at {mirror} into {} (apt with lists of its own: the machine's apt sources and packages are not changed)",
        peer.package,
        peer.release,
        peer.suite,
        peer.dir.display()
    );
    let apt_dir = prepare_apt_dir(peer, &mirror)?;
    // Without `--error-on=any`, a mirror out of reach is only a warning.
    apt(&apt_dir, &["update", "--error-on=any"], None)?;
    let deb_dir = fresh_dir(&peer.dir.join("deb"))?;
    apt(&apt_dir, &["download", peer.package], Some(&deb_dir))?;
    let deb = single_deb(&deb_dir, peer.package)?;
    let field = |name: &str| -> Result<String> {
        let value = output(
            cmd(&["dpkg-deb", "--field"]).arg(&deb).arg(name),
            QUICK_LIMIT,
        )?;
        Ok(value.trim().to_owned())
    };
    let package = field("Package")?;
    if package != peer.package {
        bail!(
            "{} holds package {package:?}, not {}",
            deb.display(),
            peer.package
        );
    }
    let version = field("Version")?;
    extract(&deb, &peer.extracted())?;
    let said = output(Command::new(peer.binary()).arg("--version"), QUICK_LIMIT)
        .with_context(|| format!("{} does not run", peer.binary().display()))?;
    println!(
        "setup: {} --version: {}",
        peer.binary().display(),
        said.lines().next().unwrap_or("").trim()
    );
    write(&peer.version_file(), &format!("{version}\n"))?;
    // The package lists (~15 MB) served their purpose; the next fetch gets new ones.
    for sub in ["lists", "cache"] {
        let _ = std::fs::remove_dir_all(apt_dir.join(sub));
    }
    Ok(version)
}

/// `dir/apt` with its source list (`deb [signed-by=KEYRING] MIRROR SUITE main`), an
/// empty dpkg status and the directories apt wants.
fn prepare_apt_dir(peer: &CachedPeer, mirror: &str) -> Result<PathBuf> {
    let dir = peer.dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    write(
        &dir.join("sources.list"),
        &source_list(mirror, peer.suite, KEYRING),
    )?;
    write(&dir.join("status"), "")?;
    Ok(dir)
}

/// `apt-get -q OPTIONS ARGS` in `cwd` (if any); fails with the end of its output.
fn apt(apt_dir: &Path, args: &[&str], cwd: Option<&Path>) -> Result<()> {
    let mut c = cmd(&["apt-get", "-q"]);
    c.args(apt_options(apt_dir))
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(cwd) = cwd {
        c.current_dir(cwd);
    }
    let out = capture(&mut c, APT_LIMIT)?;
    if !out.status.success() {
        let text = format!("{}{}", out.stdout, out.stderr);
        bail!(
            "`apt-get {}` failed ({}): {}",
            args.join(" "),
            out.status,
            last_lines(&text, 4)
        );
    }
    Ok(())
}

/// The options that give apt a source list, lists, cache, dpkg status and preferences
/// of its own under `apt_dir` (and skip the AppStream metadata and translations).
fn apt_options(apt_dir: &Path) -> Vec<String> {
    let at = |sub: &str| apt_dir.join(sub).display().to_string();
    [
        ("Dir::Etc::SourceList", at("sources.list")),
        ("Dir::Etc::SourceParts", "/dev/null".to_owned()),
        ("Dir::Etc::Preferences", "/dev/null".to_owned()),
        ("Dir::Etc::PreferencesParts", "/dev/null".to_owned()),
        ("Dir::State::Lists", at("lists")),
        ("Dir::State::status", at("status")),
        ("Dir::Cache", at("cache")),
        ("Acquire::Languages", "none".to_owned()),
        (
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
            "false".to_owned(),
        ),
        // Root downloads into a directory the `_apt` user cannot write.
        ("APT::Sandbox::User", "root".to_owned()),
    ]
    .into_iter()
    .flat_map(|(k, v)| ["-o".to_owned(), format!("{k}={v}")])
    .collect()
}

/// The one-line source list for `suite`'s main component at `mirror`.
fn source_list(mirror: &str, suite: &str, keyring: &str) -> String {
    format!("deb [signed-by={keyring}] {mirror} {suite} main\n")
}

/// The machine's apt source files: `sources.list` and `sources.list.d/*.list|*.sources`.
fn host_sources() -> Vec<String> {
    let mut files = vec![PathBuf::from(HOST_SOURCES)];
    if let Ok(entries) = std::fs::read_dir(HOST_SOURCE_PARTS) {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// The first Debian archive URI (its path ends in `/debian`; not `debian-security`)
/// of a `deb` entry in `sources`, one-line or deb822 format; else [`DEFAULT_MIRROR`].
fn debian_mirror(sources: &[String]) -> String {
    sources
        .iter()
        .flat_map(|text| deb_uris(text))
        .find(|uri| {
            (uri.starts_with("http://") || uri.starts_with("https://"))
                && uri.trim_end_matches('/').ends_with("/debian")
        })
        .map_or_else(
            || DEFAULT_MIRROR.to_owned(),
            |uri| uri.trim_end_matches('/').to_owned(),
        )
}

/// The URIs of the binary (`deb`) entries of one source file, in order.
fn deb_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // One-line format: `deb [options] URI suite components`.
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        out.extend(rest.split_whitespace().next().map(str::to_owned));
    }
    // deb822: paragraphs with `Types:` and `URIs:` fields.
    for paragraph in text.split("\n\n") {
        let field = |name: &str| {
            paragraph.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if enabled && is_deb {
            if let Some(uris) = field("URIs") {
                out.extend(uris.split_whitespace().map(str::to_owned));
            }
        }
    }
    out
}

/// `dir`, emptied (created when missing).
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_owned())
}

/// The one `.deb` of `package` that `apt-get download` left in `dir`.
fn single_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    match debs_of(&names, package).as_slice() {
        [one] => Ok(dir.join(one)),
        [] => bail!(
            "apt-get download left no {package} .deb in {}",
            dir.display()
        ),
        many => bail!(
            "more than one {package} .deb in {}: {many:?}",
            dir.display()
        ),
    }
}

/// The file names among `names` that are `.deb`s of `package` (`PACKAGE_VERSION_ARCH.deb`).
fn debs_of(names: &[String], package: &str) -> Vec<String> {
    let prefix = format!("{package}_");
    names
        .iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        .cloned()
        .collect()
}

/// `dpkg-deb -x DEB` into `root`, through a temporary sibling renamed at the end.
fn extract(deb: &Path, root: &Path) -> Result<()> {
    let tmp = root.with_extension("new");
    for d in [&tmp, root] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    output(cmd(&["dpkg-deb", "-x"]).arg(deb).arg(&tmp), QUICK_LIMIT)?;
    std::fs::rename(&tmp, root)
        .with_context(|| format!("renaming {} to {}", tmp.display(), root.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The last `n` non-empty lines of `text`, joined by ` / `.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";

    fn s(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn the_mirror_is_the_machines_debian_archive() {
        assert_eq!(debian_mirror(&s(&[DEB822])), "http://deb.debian.org/debian");
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_mirror(&s(&[
                "deb https://packages.cloud.google.com/apt cloud-sdk main\n",
                one_line
            ])),
            "https://mirror.example/debian"
        );
        // Security only, source entries, disabled paragraphs: the default.
        let other = "deb-src http://m/debian bookworm main\nType: deb\n";
        let disabled = "Types: deb\nURIs: http://off/debian\nEnabled: no\n";
        assert_eq!(
            debian_mirror(&s(&[
                "deb http://deb.debian.org/debian-security bookworm-security main",
                other,
                disabled
            ])),
            DEFAULT_MIRROR
        );
        assert_eq!(debian_mirror(&[]), DEFAULT_MIRROR);
    }

    #[test]
    fn deb822_lists_every_uri_of_deb_paragraphs() {
        let text = "Types: deb-src deb\nURIs: http://a/debian http://b/debian\n\nTypes: deb-src\nURIs: http://c/debian\n";
        assert_eq!(deb_uris(text), ["http://a/debian", "http://b/debian"]);
    }

    #[test]
    fn apt_keeps_its_state_in_the_cache() {
        let o = apt_options(Path::new("/c/apt"));
        let joined = o.join(" ");
        for expected in [
            "-o Dir::Etc::SourceList=/c/apt/sources.list",
            "-o Dir::Etc::SourceParts=/dev/null",
            "-o Dir::State::Lists=/c/apt/lists",
            "-o Dir::State::status=/c/apt/status",
            "-o Dir::Cache=/c/apt/cache",
        ] {
            assert!(joined.contains(expected), "{expected} missing: {joined}");
        }
        assert!(o.chunks(2).all(|pair| pair[0] == "-o"), "{o:?}");
        assert!(!joined.contains("/etc/apt"), "{joined}");
    }

    #[test]
    fn the_source_list_is_signed_by_debians_keyring() {
        assert_eq!(
            source_list("http://m/debian", "trixie", KEYRING),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://m/debian trixie main\n"
        );
    }

    #[test]
    fn the_deb_is_found_by_package_name() {
        let names = s(&[
            "wireguard-go_0.0.20231211-1+b9_amd64.deb",
            "wireguard-go-extra_1_amd64.deb",
            "wireguard-go_partial",
        ]);
        assert_eq!(
            debs_of(&names, "wireguard-go"),
            ["wireguard-go_0.0.20231211-1+b9_amd64.deb"]
        );
        assert!(debs_of(&names, "boringtun").is_empty());
    }

    #[test]
    fn last_lines_are_joined() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b / c");
        assert_eq!(last_lines("", 3), "");
    }
}
