//! `nixoci plan`: the layer plan a build would use, printed instead of
//! built. Takes `nixoci build`'s arguments (the same [`build::Args`], with
//! the flags that only shape the written image hidden), so a plan is
//! exactly what the build with the same flags makes.

use anyhow::Context;
use clap::builder::Resettable;
use std::collections::BTreeMap;

use clap::{ArgMatches, Command, FromArgMatches, Id};

use super::build;
use super::flags::human_bytes;
use super::resolve::{apply_structured_attrs, plan_request};
use super::Classify;
use crate::pipeline;
use crate::plan::{LayerPlan, Origin};

const ABOUT: &str = "Print the layer plan a build would use, without building anything";

const LONG_ABOUT: &str = "\
Print the layer plan a build would use, without building anything.

Takes the same inputs as `nixoci build`: installables with --system or
--platform, --closure-json, --from, and the layering flags --max-layers,
--reserve-layers, --min-layer-size, --layer and --previous. Nix builds the
installables (a plan needs their closures), but no layer is written.

Prints each platform's layers bottom first, with their NAR size, where they
come from (planned, pinned by --layer, or kept from --previous) and their
store paths; with --json, the plan itself (a LayerPlan, see
docs/layering.md).

--previous and --from read a layout or a registry image (see `nixoci build
--help`); a --from base's layers count in --max-layers and are printed as a
`base` line first.

Examples:

  nixoci plan .#app --system x86_64-linux --system aarch64-linux \\
      --max-layers 20 --previous app.oci:1.0

  nixoci plan .#app --previous docker://registry.example.org/app:1.0 \\
      --previous-optional --json";

/// `nixoci plan`'s arguments: `nixoci build`'s.
#[derive(Debug)]
pub struct Args {
    pub build: build::Args,
}

impl FromArgMatches for Args {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Args {
            build: build::Args::from_arg_matches(matches)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.build.update_from_arg_matches(matches)
    }
}

impl clap::Args for Args {
    fn augment_args(cmd: Command) -> Command {
        adjust(<build::Args as clap::Args>::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        adjust(<build::Args as clap::Args>::augment_args_for_update(cmd))
    }
}

/// `build`'s arguments as `plan` takes them: no output, and the flags that
/// only shape the written image hidden (still accepted, so a build's
/// command line can be planned as it is).
fn adjust(cmd: Command) -> Command {
    let mut cmd = cmd
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .mut_arg("output", |a| {
            a.required_unless_present(Resettable::<Id>::Reset)
                .hide(true)
        })
        .mut_arg("json", |a| {
            a.help("Print the plan as JSON (a LayerPlan) on stdout")
                .long_help(None)
        });
    for hidden in [
        "tag",
        "entrypoint",
        "cmd",
        "env",
        "workdir",
        "user",
        "expose",
        "label",
        "annotation",
        "created",
        "jobs",
        "level",
        "volumes",
        "stop_signal",
        "compression",
        "cache_dir",
        "no_cache",
        "no_arch_check",
    ] {
        cmd = cmd.mut_arg(hidden, |a| a.hide(true));
    }
    cmd
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut args = args.build;
    if args.structured_attrs {
        apply_structured_attrs(&mut args)?;
    }
    let req = plan_request(&args)?;
    let plan = pipeline::plan_request(&req)
        .classify()
        .context("planning layers")?;
    let mut bytes = if args.json {
        let mut b = serde_json::to_vec_pretty(&plan)?;
        b.push(b'\n');
        b
    } else {
        let roots: BTreeMap<_, usize> = req
            .images
            .iter()
            .map(|(p, i)| (p.clone(), i.rootfs.entries.len()))
            .collect();
        let bases: BTreeMap<_, (usize, u64)> = req
            .images
            .iter()
            .map(|(p, i)| {
                let layers = i
                    .base
                    .as_ref()
                    .map(|b| b.layers.as_slice())
                    .unwrap_or_default();
                let size = layers.iter().filter_map(|l| l.size).sum();
                (p.clone(), (layers.len(), size))
            })
            .collect();
        let table = with_base_layers(&table(&plan), &bases, args.from.as_deref());
        with_root_layers(&table, &roots).into_bytes()
    };
    if bytes.is_empty() {
        bytes.push(b'\n');
    }
    super::print_stdout(&bytes)
}

/// `table` with a first line per platform whose image is on a base image
/// (`--from`, or the image spec's `fromImage`): its layers come below the
/// planned ones and count in the budget.
fn with_base_layers(
    table: &str,
    bases: &BTreeMap<crate::platform::Platform, (usize, u64)>,
    from: Option<&str>,
) -> String {
    if bases.values().all(|(n, _)| *n == 0) {
        return table.to_owned();
    }
    let mut out = String::new();
    for (n, (block, (_, &(count, size)))) in table.split("\n\n").zip(bases).enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mut lines = block.trim_end_matches('\n').lines();
        for line in lines.by_ref().take(2) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!(
            "{:>5}  {:>10}  {:<8}  {:<6}  {count} layer{} of the base image{}, below the store layers, counted in the budget\n",
            "base",
            human_bytes(size),
            "base",
            "-",
            if count == 1 { "" } else { "s" },
            from.map(|f| format!(" {f}")).unwrap_or_default(),
        ));
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `table` with a last line per platform whose image has a root layer
/// (built on top of the planned layers): how many entries it holds.
fn with_root_layers(table: &str, roots: &BTreeMap<crate::platform::Platform, usize>) -> String {
    let mut out = String::new();
    let mut platforms = roots.iter();
    let mut current = platforms.next();
    for (n, block) in table.split("\n\n").enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(block.trim_end_matches('\n'));
        out.push('\n');
        if let Some((_, &entries)) = current {
            if entries > 0 {
                out.push_str(&format!(
                    "{:>5}  {:>10}  {:<8}  {:<6}  {entries} entr{} outside the store\n",
                    "top",
                    "-",
                    "root",
                    "-",
                    if entries == 1 { "y" } else { "ies" }
                ));
            }
        }
        current = platforms.next();
    }
    out
}

/// The plan as text: per platform, a line per layer (bottom first) and a
/// line per further store path.
pub fn table(plan: &LayerPlan) -> String {
    let mut out = String::new();
    for (n, image) in plan.images.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let total: u64 = image.layers.iter().map(|&l| plan.layers[l].nar_size).sum();
        out.push_str(&format!(
            "{}: {} layer{}, {}\n",
            image.platform,
            image.layers.len(),
            if image.layers.len() == 1 { "" } else { "s" },
            human_bytes(total)
        ));
        out.push_str(&format!(
            "{:>5}  {:>10}  {:<8}  {:<6}  store paths\n",
            "layer", "size", "origin", "shared"
        ));
        for (i, &l) in image.layers.iter().enumerate() {
            let layer = &plan.layers[l];
            let origin = match layer.origin {
                Origin::Planned => "planned",
                Origin::Pinned => "pinned",
                Origin::Previous => "previous",
            };
            let images = plan
                .images
                .iter()
                .filter(|im| im.layers.contains(&l))
                .count();
            let shared = if images > 1 {
                format!("{images}")
            } else {
                "-".to_owned()
            };
            let mut paths = layer.store_paths.iter();
            let first = paths.next().map(|p| p.as_str()).unwrap_or("");
            out.push_str(&format!(
                "{:>5}  {:>10}  {:<8}  {:<6}  {first}\n",
                i + 1,
                human_bytes(layer.nar_size),
                origin,
                shared
            ));
            for p in paths {
                out.push_str(&format!("{:>37}{p}\n", ""));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::plan::{ImagePlan, PlannedLayer};
    use crate::store_path::StorePath;

    #[test]
    fn the_command_line_is_consistent() {
        super::super::Cli::command().debug_assert();
        let help = super::super::Cli::command()
            .find_subcommand_mut("plan")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("without building anything"), "{help}");
        assert!(help.contains("--previous"), "{help}");
        assert!(!help.contains("--entrypoint"), "{help}");
    }

    #[test]
    fn tables_list_layers_bottom_first() {
        let p = |name: &str| {
            StorePath::from_absolute(&format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
        };
        let plan = LayerPlan {
            version: crate::plan::PLAN_VERSION,
            layers: vec![
                PlannedLayer {
                    store_paths: vec![p("glibc"), p("zlib")],
                    nar_size: 3 << 20,
                    origin: Origin::Previous,
                },
                PlannedLayer {
                    store_paths: vec![p("app")],
                    nar_size: 2048,
                    origin: Origin::Planned,
                },
            ],
            images: vec![ImagePlan {
                platform: "linux/amd64".parse().unwrap(),
                layers: vec![0, 1],
            }],
        };
        let text = table(&plan);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "linux/amd64: 2 layers, 3.0 MiB");
        assert!(
            lines[2].contains("    1     3.0 MiB  previous  -"),
            "{text}"
        );
        assert!(lines[2].ends_with("-glibc"), "{text}");
        assert!(lines[3].trim_start().starts_with("/nix/store/") && lines[3].ends_with("-zlib"));
        assert!(lines[4].contains("    2     2.0 KiB  planned"), "{text}");
    }
}
