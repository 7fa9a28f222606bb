//! The stand-in Lily image, for clusters whose pods really run (kind).
//!
//! The upstream `filecoin/lily` image cannot be pulled here, and a real Lily needs the
//! Filecoin network. `ci/lily-image.sh` builds `lily-e2e/lily:standin` from this project's
//! `ci/lily-standin` (a `lily` that does what the chart's containers run, just enough: the
//! daemon's API port, `wait-api`, `sync wait`, `migrate`, the storage connections of its
//! `config.toml` over TLS) on a Debian root with `/bin/sh` and coreutils for the chart's
//! init scripts. The kind provider loads it into every node, and scenarios on kind point
//! `image.repo`/`image.tag` at it ([`values_overlay`]).

use crate::engine::Engine;
use crate::error::{Error, Result};

/// The image's repository and tag, as the chart's `image.repo` and `image.tag` take them.
pub const REPO: &str = "lily-e2e/lily";
pub const TAG: &str = "standin";
/// The label `ci/lily-image.sh` puts on the image.
pub const LABEL: &str = "io.lily-e2e.standin";

/// `repo:tag`.
pub fn image() -> String {
    format!("{REPO}:{TAG}")
}

/// Checks, before anything starts, that the engine has the image; else says how to build it.
pub async fn check(engine: &Engine) -> Result<()> {
    engine.check()?;
    match engine.image_labels(&image()).await? {
        Some(labels) if labels.contains_key(LABEL) => Ok(()),
        Some(_) => Err(Error::Invalid(format!(
            "{} is not lily-e2e's stand-in Lily image (it has no label {LABEL}); remove it and build the stand-in with ./ci/lily-image.sh",
            image()
        ))),
        None => Err(Error::Invalid(format!(
            "the stand-in Lily image {} is not in the Docker engine; build it with ./ci/lily-image.sh (as root; Debian packages and this \
             repository only)",
            image()
        ))),
    }
}

/// The values a kind run adds after the scenario's: the stand-in image, and daemon resources
/// a machine of a few cores can schedule (the chart's default asks for 31 CPUs and 254Gi, as
/// an operator sizing a real indexer would; the values files keep that default so the
/// simulated nodes see it).
pub fn values_overlay() -> String {
    format!(
        "# lily-e2e, --provider kind: the stand-in Lily image and daemon resources that fit kind's nodes\n\
         image:\n  repo: {REPO}\n  tag: {TAG}\n  pullPolicy: IfNotPresent\n\
         daemon:\n  resources:\n    requests:\n      cpu: 100m\n      memory: 128Mi\n    limits:\n      cpu: \"1\"\n      memory: 512Mi\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_points_the_chart_at_the_stand_in() {
        let v: serde_json::Value = crate::yaml::from_str(&values_overlay()).unwrap();
        assert_eq!(v["image"]["repo"], REPO);
        assert_eq!(v["image"]["tag"], TAG);
        assert_eq!(v["daemon"]["resources"]["requests"]["cpu"], "100m");
    }
}
