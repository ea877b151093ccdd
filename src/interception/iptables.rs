//! `breakwater init-iptables`: the rules an init container applies so that the
//! pod's TCP traffic reaches breakwater without the app knowing.
//!
//! Inbound TCP to the pod goes to the inbound port; outbound TCP from the pod goes
//! to the outbound port — except breakwater's own traffic (its uid, so it is not
//! looped back), loopback traffic between the pod's containers, the admin port and
//! the exclusions. The rules live in chains of their own, written with
//! `iptables-restore --noflush`, so a rerun replaces them and `--clean` removes
//! them without touching anything else. IPv6 gets the same rules with ip6tables
//! when the pod has IPv6.

use std::fmt::Write as _;
use std::io::Write as _;

use std::process::{Command, ExitCode, Stdio};

use crate::config::cli::InitIptablesArgs;

pub const INBOUND_CHAIN: &str = "BREAKWATER_INBOUND";
pub const OUTBOUND_CHAIN: &str = "BREAKWATER_OUTBOUND";
const INBOUND_REDIRECT: &str = "BREAKWATER_INBOUND_REDIRECT";
const OUTBOUND_REDIRECT: &str = "BREAKWATER_OUTBOUND_REDIRECT";
const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT,
    OUTBOUND_CHAIN,
    OUTBOUND_REDIRECT,
];

/// The built-in chains ours hang from: (built-in chain, our chain).
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn tables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

pub use crate::addr::Cidr;

/// The IP family of a range, for the iptables or ip6tables rules it goes to.
fn family(cidr: &Cidr) -> Family {
    if cidr.addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// What the rules redirect and what they leave alone.
#[derive(Clone, Debug)]
pub struct Rules {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Rules {
    /// The `iptables-restore --noflush` input for one family: our chains, emptied
    /// and filled. The jumps into them are added separately, once.
    pub fn restore_input(&self, family: Family) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let _ = writeln!(
            out,
            "-A {INBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            out,
            "-A {OUTBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );

        // Inbound: everything to the pod, but the admin port (the kubelet's
        // probes and Prometheus talk to breakwater itself), breakwater's own
        // listeners and the exclusions.
        let mut skip_in = vec![self.admin_port, self.inbound_port, self.outbound_port];
        skip_in.extend(&self.exclude_inbound_ports);
        for port in dedup(skip_in) {
            let _ = writeln!(out, "-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN");
        }
        let _ = writeln!(out, "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT}");

        // Outbound: breakwater's own connections first, so they are never looped
        // back; then loopback traffic between the pod's containers.
        let _ = writeln!(
            out,
            "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(
            out,
            "-A {OUTBOUND_CHAIN} -d {} -j RETURN",
            family.loopback()
        );
        for port in dedup(self.exclude_outbound_ports.clone()) {
            let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -p tcp --dport {port} -j RETURN");
        }
        for cidr in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| self::family(c) == family)
        {
            let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -d {cidr} -j RETURN");
        }
        let _ = writeln!(out, "-A {OUTBOUND_CHAIN} -p tcp -j {OUTBOUND_REDIRECT}");
        out.push_str("COMMIT\n");
        out
    }
}

fn dedup(mut ports: Vec<u16>) -> Vec<u16> {
    let mut seen = Vec::new();
    ports.retain(|p| {
        let new = !seen.contains(p);
        seen.push(*p);
        new
    });
    ports
}

/// The families to configure: IPv4 always, IPv6 when the pod has IPv6 and
/// ip6tables is installed.
fn families() -> Vec<Family> {
    let has_v6 = std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| !s.trim().is_empty());
    let has_tool = Command::new(Family::V6.restore())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_v6 && has_tool {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Why the rules could not be applied or removed; names the tool.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool}: {source}")]
    Io {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: &'static str, stderr: String },
    #[error("{tool}: cannot add the jump from {hook} to {chain}")]
    Jump {
        tool: &'static str,
        hook: &'static str,
        chain: &'static str,
    },
}

/// `iptables -t nat ARGS`, quietly; whether it succeeded.
fn tables(family: Family, args: &[&str]) -> Result<bool, IptablesError> {
    let status = Command::new(family.tables())
        .args(["-w", "-t", "nat"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| IptablesError::Spawn {
            tool: family.tables(),
            source,
        })?;
    Ok(status.success())
}

fn restore(family: Family, input: &str) -> Result<(), IptablesError> {
    let tool = family.restore();
    let io = |source| IptablesError::Io { tool, source };
    let mut child = Command::new(family.restore())
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Writes our chains and adds the jumps into them that are not there yet.
pub fn apply(rules: &Rules, family: Family) -> Result<(), IptablesError> {
    restore(family, &rules.restore_input(family))?;
    for (hook, chain) in JUMPS {
        let present = tables(family, &["-C", hook, "-p", "tcp", "-j", chain])?;
        if !present && !tables(family, &["-A", hook, "-p", "tcp", "-j", chain])? {
            return Err(IptablesError::Jump {
                tool: family.tables(),
                hook,
                chain,
            });
        }
    }
    Ok(())
}

/// Removes every jump to our chains and the chains themselves; what is already
/// gone is not an error.
pub fn clean(family: Family) -> Result<(), IptablesError> {
    for (hook, chain) in JUMPS {
        while tables(family, &["-D", hook, "-p", "tcp", "-j", chain])? {}
    }
    for chain in CHAINS {
        tables(family, &["-F", chain])?;
    }
    for chain in CHAINS {
        tables(family, &["-X", chain])?;
    }
    Ok(())
}

/// What `--dry-run` prints: the restore input and the jump commands, per family.
pub fn describe(rules: &Rules, families: &[Family], cleaning: bool) -> String {
    let mut out = String::new();
    for &family in families {
        let _ = writeln!(out, "# {}", family.tables());
        if cleaning {
            for (hook, chain) in JUMPS {
                let _ = writeln!(
                    out,
                    "{} -t nat -D {hook} -p tcp -j {chain}",
                    family.tables()
                );
            }
            for chain in CHAINS {
                let _ = writeln!(out, "{} -t nat -F {chain}", family.tables());
                let _ = writeln!(out, "{} -t nat -X {chain}", family.tables());
            }
        } else {
            let _ = writeln!(out, "{} --noflush <<'EOF'", family.restore());
            out.push_str(&rules.restore_input(family));
            out.push_str("EOF\n");
            for (hook, chain) in JUMPS {
                let _ = writeln!(
                    out,
                    "{0} -t nat -C {hook} -p tcp -j {chain} || {0} -t nat -A {hook} -p tcp -j {chain}",
                    family.tables()
                );
            }
        }
    }
    out
}

/// The subcommand.
pub fn main(args: InitIptablesArgs) -> ExitCode {
    let rules = Rules {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        proxy_uid: args.proxy_uid,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
    };
    let families = if args.dry_run {
        vec![Family::V4, Family::V6]
    } else {
        families()
    };
    if args.dry_run {
        print!("{}", describe(&rules, &families, args.clean));
        return ExitCode::SUCCESS;
    }
    for family in families {
        let done = if args.clean {
            clean(family)
        } else {
            apply(&rules, family)
        };
        match done {
            Ok(()) => eprintln!(
                "breakwater init-iptables: {} {}",
                family.tables(),
                if args.clean {
                    "rules removed"
                } else {
                    "rules applied"
                }
            ),
            Err(e) => {
                eprintln!("breakwater init-iptables: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            proxy_uid: 1717,
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432, 5432],
            exclude_outbound_cidrs: vec![
                Cidr::parse("169.254.169.254/32").unwrap_or(Cidr {
                    addr: [0, 0, 0, 0].into(),
                    prefix: 0,
                }),
                Cidr::parse("fd00::/8").unwrap_or(Cidr {
                    addr: [0, 0, 0, 0].into(),
                    prefix: 0,
                }),
            ],
        }
    }

    #[test]
    fn own_traffic_is_returned_before_anything_is_redirected() {
        let v4 = rules().restore_input(Family::V4);
        let lines: Vec<&str> = v4.lines().collect();
        let own = lines
            .iter()
            .position(|l| l.contains("--uid-owner 1717 -j RETURN"));
        let redirect = lines
            .iter()
            .position(|l| l.ends_with("-j BREAKWATER_OUTBOUND_REDIRECT"));
        assert!(own.is_some() && own < redirect, "{v4}");
        assert!(v4.contains("-A BREAKWATER_OUTBOUND -d 127.0.0.0/8 -j RETURN"));
        assert!(
            v4.contains("-A BREAKWATER_INBOUND -p tcp --dport 15000 -j RETURN"),
            "admin is never redirected"
        );
        assert!(v4.contains("-A BREAKWATER_INBOUND -p tcp --dport 22 -j RETURN"));
        assert_eq!(
            v4.matches("--dport 5432").count(),
            1,
            "duplicates are folded"
        );
        assert!(v4.contains("-d 169.254.169.254/32 -j RETURN"));
        assert!(!v4.contains("fd00::"), "IPv6 ranges go to ip6tables");
        assert!(
            v4.contains("REDIRECT --to-ports 15006") && v4.contains("REDIRECT --to-ports 15001")
        );
        assert!(v4.starts_with("*nat\n") && v4.ends_with("COMMIT\n"));
        let v6 = rules().restore_input(Family::V6);
        assert!(v6.contains("-d ::1/128 -j RETURN") && v6.contains("-d fd00::/8 -j RETURN"));
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            Cidr::parse("10.0.0.0/8").map(|c| c.to_string()).ok(),
            Some("10.0.0.0/8".into())
        );
        assert_eq!(Cidr::parse("10.1.2.3").map(|c| c.prefix).ok(), Some(32));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }

    #[test]
    fn dry_run_shows_idempotent_jumps_and_clean() {
        let text = describe(&rules(), &[Family::V4], false);
        assert!(text.contains("iptables-restore --noflush"));
        assert!(text.contains(
            "iptables -t nat -C OUTPUT -p tcp -j BREAKWATER_OUTBOUND || iptables -t nat -A OUTPUT"
        ));
        let clean = describe(&rules(), &[Family::V4], true);
        assert!(clean.contains("-X BREAKWATER_INBOUND"));
    }
}
