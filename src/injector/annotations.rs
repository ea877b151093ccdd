//! Per-pod settings: `breakwater.io/<flag>` annotations become the sidecar's flags,
//! over the injector's own (`breakwater.io/retries: "3"` is `--retries=3`,
//! `breakwater.io/mode: explicit` is inject's `--mode=explicit`).
//!
//! An annotation replaces the injector's value of its flag; a flag that repeats
//! (`--route`) takes one value per line. The merged flags are checked as `inject`
//! checks its own, so a pod whose sidecar would not start is refused, naming the
//! annotation to blame.

use clap::{CommandFactory, Parser, ValueEnum};

use crate::cli::{Cli, Command};
use crate::inject::{Plan, SidecarArgs};

/// The annotations' common prefix.
pub const PREFIX: &str = "breakwater.io/";

/// `breakwater.io/` annotations that are not flags: the opt-in switch and what
/// injection itself records on the pod.
const NOT_FLAGS: [&str; 3] = ["inject", "version", "default-container-set"];

/// inject flags that make no sense per pod.
const NOT_PER_POD: [&str; 1] = ["filename"];

/// Why a pod's annotations cannot make a sidecar; the message names them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnnotationError(pub String);

/// The injector's flags for every pod, as flags, ready to be merged with a pod's.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// inject's own flags, `--name=value` each.
    own: Vec<String>,
    /// `breakwater run` flags, `--name=value` or `--name` each.
    run: Vec<String>,
    /// The plan of a pod without annotations.
    plan: Plan,
}

/// One annotation, as flags.
struct Flags {
    key: String,
    name: String,
    own: bool,
    values: Vec<String>,
}

impl Defaults {
    /// The injector's flags, checked as `inject` checks them.
    pub fn new(args: SidecarArgs) -> Result<Defaults, crate::inject::flags::PlanError> {
        let own = own_flags(&args);
        let plan = Plan::from_args(args)?;
        let run = plan.run_flags.clone();
        Ok(Defaults { own, run, plan })
    }

    /// The plan without annotations.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The plan for a pod with these annotations (all of them; those without the
    /// prefix are ignored).
    pub fn plan_for<'a>(
        &self,
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Plan, AnnotationError> {
        let mut flags = Vec::new();
        let mut errors = Vec::new();
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if NOT_FLAGS.contains(&name) {
                continue;
            }
            match annotation_flags(key, name, value) {
                Ok(f) => flags.push(f),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(AnnotationError(errors.join("; ")));
        }
        if flags.is_empty() {
            return Ok(self.plan.clone());
        }
        match self.merge(&flags) {
            Ok(plan) => Ok(plan),
            Err(message) => Err(self.blame(&flags, message)),
        }
    }

    /// The annotations to blame for `message`: each that fails on its own, else all.
    fn blame(&self, flags: &[Flags], message: String) -> AnnotationError {
        let alone: Vec<String> = flags
            .iter()
            .filter_map(|f| {
                self.merge(std::slice::from_ref(f))
                    .err()
                    .map(|e| format!("annotation {}: {e}", f.key))
            })
            .collect();
        if alone.is_empty() {
            let keys: Vec<&str> = flags.iter().map(|f| f.key.as_str()).collect();
            AnnotationError(format!("annotations {}: {message}", keys.join(", ")))
        } else {
            AnnotationError(alone.join("; "))
        }
    }

    /// The defaults with `flags` in place of theirs, parsed and checked.
    fn merge(&self, flags: &[Flags]) -> Result<Plan, String> {
        let replaced = |list: &[String], own: bool| -> Vec<String> {
            list.iter()
                .filter(|f| {
                    let name = flag_name(f);
                    !flags.iter().any(|a| a.own == own && a.name == name)
                })
                .cloned()
                .collect()
        };
        let mut argv = vec!["breakwater".to_string(), "inject".to_string()];
        argv.extend(replaced(&self.own, true));
        argv.extend(
            flags
                .iter()
                .filter(|f| f.own)
                .flat_map(|f| f.values.clone()),
        );
        argv.extend(replaced(&self.run, false));
        argv.extend(
            flags
                .iter()
                .filter(|f| !f.own)
                .flat_map(|f| f.values.clone()),
        );
        let args = match Cli::try_parse_from(&argv) {
            Ok(Cli {
                command: Command::Inject(args),
                ..
            }) => args,
            Ok(_) => return Err("not inject flags".into()),
            Err(e) => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid flags");
                return Err(first.trim_start_matches("error: ").to_string());
            }
        };
        Plan::from_args(args.sidecar).map_err(|e| e.to_string())
    }
}

/// `--name` of `--name=value`.
fn flag_name(flag: &str) -> &str {
    let bare = flag.trim_start_matches('-');
    bare.split('=').next().unwrap_or(bare)
}

/// The flags one annotation stands for.
fn annotation_flags(key: &str, name: &str, value: &str) -> Result<Flags, String> {
    let own = SidecarArgs::is_own_flag(&format!("--{name}")) && !NOT_PER_POD.contains(&name);
    let cli = Cli::command();
    let subcommand = if own { "inject" } else { "run" };
    let arg = cli
        .find_subcommand(subcommand)
        .and_then(|c| c.get_arguments().find(|a| a.get_long() == Some(name)));
    let Some(arg) = arg.filter(|_| !NOT_PER_POD.contains(&name)) else {
        return Err(format!(
            "unknown annotation {key}: {name} is not a flag of breakwater run or inject"
        ));
    };
    let values = if arg.get_action().takes_values() {
        let lines: Vec<&str> = value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            return Err(format!("annotation {key}: --{name} needs a value"));
        }
        lines.iter().map(|v| format!("--{name}={v}")).collect()
    } else {
        match value.trim() {
            "true" => vec![format!("--{name}")],
            "false" => Vec::new(),
            other => {
                return Err(format!(
                    "annotation {key}: --{name} is a switch: \"true\" or \"false\", not {other:?}"
                ));
            }
        }
    };
    Ok(Flags {
        key: key.to_string(),
        name: name.to_string(),
        own,
        values,
    })
}

/// inject's own flags as `--name=value`, so that a pod's annotations can replace them.
fn own_flags(args: &SidecarArgs) -> Vec<String> {
    fn name<T: ValueEnum>(v: &T) -> String {
        v.to_possible_value()
            .map(|p| p.get_name().to_string())
            .unwrap_or_default()
    }
    let mut flags = vec![
        format!("--mode={}", name(&args.mode)),
        format!("--sidecar={}", name(&args.sidecar)),
        format!("--image={}", args.image),
        format!("--init-image={}", args.init_image),
        format!("--proxy-uid={}", args.proxy_uid),
    ];
    if let Some(port) = args.app_port {
        flags.push(format!("--app-port={port}"));
    }
    let join = |v: &[String]| v.join(",");
    let lists = [
        (
            "exclude-inbound-ports",
            join(
                &args
                    .exclude_inbound_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "exclude-outbound-ports",
            join(
                &args
                    .exclude_outbound_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>(),
            ),
        ),
        ("exclude-outbound-cidrs", join(&args.exclude_outbound_cidrs)),
    ];
    for (flag, value) in lists {
        if !value.is_empty() {
            flags.push(format!("--{flag}={value}"));
        }
    }
    if let Some(configmap) = &args.policy_configmap {
        flags.push(format!("--policy-configmap={configmap}"));
        flags.push(format!(
            "--policy-configmap-key={}",
            args.policy_configmap_key
        ));
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(flags: &[&str]) -> Defaults {
        let argv = ["breakwater", "inject"].iter().chain(flags);
        match Cli::try_parse_from(argv).expect("inject flags").command {
            Command::Inject(args) => Defaults::new(args.sidecar).expect("valid defaults"),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn every_inject_flag_survives_the_trip_through_flags() {
        let d = defaults(&[
            "--mode=explicit",
            "--sidecar=classic",
            "--image=r/bw:1",
            "--init-image=r/bw:1-init",
            "--app-port=9000",
            "--proxy-uid=1800",
            "--exclude-inbound-ports=1,2",
            "--exclude-outbound-ports=3",
            "--exclude-outbound-cidrs=10.0.0.0/8",
            "--policy-configmap=shop",
            "--policy-configmap-key=p.yaml",
            "--retries=3",
        ]);
        let again = d.plan_for([]).expect("no annotations");
        let merged = d.merge(&[]).expect("the defaults as flags");
        assert_eq!(format!("{merged:?}"), format!("{again:?}"));
        assert_eq!(format!("{:?}", d.plan()), format!("{again:?}"));
    }

    #[test]
    fn annotations_replace_the_injectors_flags() {
        let d = defaults(&["--retries=2", "--route=a:80,timeout=1s"]);
        let plan = d
            .plan_for([
                ("breakwater.io/retries", "3"),
                (
                    "breakwater.io/route",
                    "payments:8080,timeout=2s\nsearch,retries=0\n",
                ),
                ("breakwater.io/mode", "explicit"),
                ("breakwater.io/inject", "enabled"),
                ("breakwater.io/version", "0.0.1"),
                ("other.io/retries", "x"),
            ])
            .expect("valid annotations");
        assert_eq!(plan.mode, crate::inject::Mode::Explicit);
        assert_eq!(
            plan.run_flags,
            [
                "--retries=3",
                "--route=payments:8080,timeout=2s",
                "--route=search,retries=0"
            ]
        );
    }

    #[test]
    fn a_bad_annotation_is_named() {
        let d = defaults(&[]);
        let err = d
            .plan_for([
                ("breakwater.io/retries", "lots"),
                ("breakwater.io/timeout", "2s"),
            ])
            .expect_err("invalid");
        assert!(
            err.0.starts_with("annotation breakwater.io/retries: "),
            "{err}"
        );
        assert!(err.0.contains("lots"), "{err}");
        assert!(!err.0.contains("timeout"), "{err}");

        let err = d
            .plan_for([("breakwater.io/retires", "3")])
            .expect_err("a typo");
        assert!(
            err.0.contains("unknown annotation breakwater.io/retires"),
            "{err}"
        );

        let err = d
            .plan_for([("breakwater.io/mode", "sideways")])
            .expect_err("bad mode");
        assert!(
            err.0.contains("breakwater.io/mode") && err.0.contains("sideways"),
            "{err}"
        );

        let err = d
            .plan_for([("breakwater.io/inbound-addr", "0.0.0.0:1")])
            .expect_err("set by inject");
        assert!(err.0.contains("set by inject"), "{err}");

        let err = d
            .plan_for([("breakwater.io/filename", "x.yaml")])
            .expect_err("not per pod");
        assert!(err.0.contains("unknown annotation"), "{err}");
    }
}
