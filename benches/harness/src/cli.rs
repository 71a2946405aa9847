//! Command-line options.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::impls::{parse_list, Impl};

/// What to run and where to write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// CI mode: short runs, every figure must be nonzero.
    pub(crate) quick: bool,
    /// Seconds per iperf3 run.
    pub(crate) duration: u32,
    /// Repeats per scenario.
    pub(crate) repeat: u32,
    /// The implementations, in column order.
    pub(crate) impls: Vec<Impl>,
    /// Our dataplane binary.
    pub(crate) dataplane: PathBuf,
    /// Where the JSON goes.
    pub(crate) json: PathBuf,
    /// Where the SVG goes.
    pub(crate) svg: PathBuf,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Print [`crate::usage::USAGE`].
    Help,
    /// Run the benchmark.
    Run(Options),
}

/// Parses `args` (without the program name); `target` is the cargo target directory the
/// defaults live in.
pub(crate) fn parse(args: &[String], target: &Path) -> Result<Command, Error> {
    let mut o = Options {
        quick: false,
        duration: 5,
        repeat: 3,
        impls: Impl::ALL.to_vec(),
        dataplane: target.join("release/portdistrict-dataplane"),
        json: target.join("pd-bench/results.json"),
        svg: target.join("pd-bench/results.svg"),
    };
    let (mut duration, mut repeat) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => o.quick = true,
            "--duration" => duration = Some(number(arg, &value()?)?),
            "--repeat" => repeat = Some(number(arg, &value()?)?),
            "--impl" => o.impls = parse_list(&value()?).map_err(Error::Usage)?,
            "--dataplane" => o.dataplane = value()?.into(),
            "--json" => o.json = value()?.into(),
            "--svg" => o.svg = value()?.into(),
            other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let (d, r) = if o.quick { (1, 1) } else { (5, 3) };
    o.duration = duration.unwrap_or(d);
    o.repeat = repeat.unwrap_or(r);
    Ok(Command::Run(o))
}

/// A positive integer option value.
fn number(flag: &str, v: &str) -> Result<u32, Error> {
    match v.parse::<u32>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(n),
        _ => Err(Error::Usage(format!(
            "{flag} takes a whole number from 1 to 3600, not {v:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn opts(s: &str) -> Options {
        match parse(&args(s), Path::new("/t")).unwrap() {
            Command::Run(o) => o,
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults() {
        let o = opts("");
        assert_eq!((o.quick, o.duration, o.repeat), (false, 5, 3));
        assert_eq!(o.impls, Impl::ALL);
        assert_eq!(o.dataplane, Path::new("/t/release/portdistrict-dataplane"));
        assert_eq!(o.json, Path::new("/t/pd-bench/results.json"));
        assert_eq!(o.svg, Path::new("/t/pd-bench/results.svg"));
    }

    #[test]
    fn quick_shortens_unless_overridden() {
        let o = opts("--quick");
        assert_eq!((o.quick, o.duration, o.repeat), (true, 1, 1));
        let o = opts("--repeat 2 --quick --duration 3");
        assert_eq!((o.duration, o.repeat), (3, 2));
    }

    #[test]
    fn values() {
        let o = opts("--impl portdistrict,bare --dataplane /x/dp --json a.json --svg b.svg");
        assert_eq!(o.impls, [Impl::Bare, Impl::Portdistrict]);
        assert_eq!(o.dataplane, Path::new("/x/dp"));
        assert_eq!(
            (o.json.to_str(), o.svg.to_str()),
            (Some("a.json"), Some("b.svg"))
        );
    }

    #[test]
    fn errors() {
        let t = Path::new("/t");
        for bad in [
            "--duration",
            "--duration 0",
            "--repeat x",
            "--frob",
            "--impl nope",
        ] {
            let e = parse(&args(bad), t).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad}: {e}");
        }
        assert_eq!(parse(&args("--help"), t).unwrap(), Command::Help);
    }
}
