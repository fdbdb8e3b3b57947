//! Test hook: named fault points in `up`, so the tests can prove that a
//! loader killed, or failing, at any phase leaves nothing that `down` (or
//! the next `up`) does not clean up. Nothing in normal use sets it.
//!
//! `NETPATH_FAULT=POINT[:ACTION]` where ACTION is
//! - `fail` (the default): the phase returns an error, so `up` rolls back;
//! - `kill`: the process sends itself SIGKILL, as a crash or the OOM killer
//!   would (no destructor, no rollback, nothing flushed).
//!
//! Each point is reached once the named step is done:
//!
//! | point | reached when |
//! | --- | --- |
//! | `record` | the half-built record is saved, nothing else exists yet |
//! | `bridge` | the bridge is created |
//! | `container-N` | container N (0-based) is created and plugged in |
//! | `nat` | the masquerade table is added and forwarding turned on (`--nat`) |
//! | `maps` | the datapath's maps are loaded, pinned and filled, no program attached |
//! | `attached-N` | port N's programs are attached (and their links pinned) |
//! | `built` | everything is built; the record is not yet marked complete |
//!
//! An unknown point or action is an error wherever a point is checked, so a
//! typo in a test cannot pass as "the fault never fired".

use std::fmt;

use anyhow::{Result, bail};

/// The variable that arms a fault point.
pub const FAULT_ENV: &str = "NETPATH_FAULT";

/// A phase of `up` where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Record,
    Bridge,
    Container(usize),
    Nat,
    Maps,
    Attached(usize),
    Built,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Record => f.write_str("record"),
            Point::Bridge => f.write_str("bridge"),
            Point::Container(n) => write!(f, "container-{n}"),
            Point::Nat => f.write_str("nat"),
            Point::Maps => f.write_str("maps"),
            Point::Attached(n) => write!(f, "attached-{n}"),
            Point::Built => f.write_str("built"),
        }
    }
}

impl std::str::FromStr for Point {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let indexed = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
        Ok(match s {
            "record" => Point::Record,
            "bridge" => Point::Bridge,
            "nat" => Point::Nat,
            "maps" => Point::Maps,
            "built" => Point::Built,
            _ => match (indexed("container-"), indexed("attached-")) {
                (Some(n), _) => Point::Container(n),
                (_, Some(n)) => Point::Attached(n),
                _ => bail!(
                    "unknown fault point {s:?} (record, bridge, container-N, nat, maps, attached-N or built)"
                ),
            },
        })
    }
}

/// What happens at the armed point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Fail,
    Kill,
}

/// Parses `POINT[:ACTION]`.
pub fn parse(value: &str) -> Result<(Point, Action)> {
    let (point, action) = match value.rsplit_once(':') {
        Some((point, "fail")) => (point, Action::Fail),
        Some((point, "kill")) => (point, Action::Kill),
        Some((_, other)) => {
            bail!("unknown fault action {other:?} in {FAULT_ENV}={value} (fail or kill)")
        }
        None => (value, Action::Fail),
    };
    Ok((point.parse()?, action))
}

/// Called by `up` once `point` is reached: fails, or kills this process, if
/// `NETPATH_FAULT` names it.
pub fn at(point: Point) -> Result<()> {
    let Ok(value) = std::env::var(FAULT_ENV) else {
        return Ok(());
    };
    let (armed, action) = parse(&value)?;
    if armed != point {
        return Ok(());
    }
    match action {
        Action::Fail => bail!("injected fault at {point} ({FAULT_ENV}={value})"),
        Action::Kill => {
            log::warn!("injected fault: SIGKILL at {point} ({FAULT_ENV}={value})");
            // SIGKILL, not abort or exit: nothing may run after this point,
            // exactly as when the kernel kills the loader.
            nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL)?;
            unreachable!("SIGKILL cannot be caught");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_actions_round_trip() {
        for point in [
            Point::Record,
            Point::Bridge,
            Point::Container(0),
            Point::Container(11),
            Point::Nat,
            Point::Maps,
            Point::Attached(3),
            Point::Built,
        ] {
            assert_eq!(parse(&point.to_string()).unwrap(), (point, Action::Fail));
            assert_eq!(
                parse(&format!("{point}:kill")).unwrap(),
                (point, Action::Kill)
            );
            assert_eq!(
                parse(&format!("{point}:fail")).unwrap(),
                (point, Action::Fail)
            );
        }
    }

    #[test]
    fn typos_are_errors_not_silence() {
        for bad in [
            "brige",
            "container-",
            "container-x",
            "attached",
            "nat:explode",
            "",
            "maps:",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
