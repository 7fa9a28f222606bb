//! What the local control plane leaves out because no scenario, test or simulated component
//! uses it: less for the API server to build, store and serve at start, and fewer
//! controllers and informers in the controller manager.
//!
//! Kept: core, apps, storage.k8s.io (VolumeAttachment, CSI), policy (eviction, PDBs),
//! coordination (leases), events, discovery, networking (ServiceCIDR and IPAddress back
//! ClusterIP allocation), scheduling (PriorityClass, for the Priority plugin), rbac,
//! admissionregistration, apiextensions (a test installs a ServiceMonitor CRD),
//! resource.k8s.io (see below), authentication and authorization.

/// API groups turned off (`--runtime-config`), each with why nothing misses it:
/// - `flowcontrol.apiserver.k8s.io/v1`: priority and fairness is off
///   (`--enable-priority-and-fairness=false`), so its objects configure nothing; off, the
///   API server also skips creating its suggested FlowSchemas at start.
/// - `autoscaling/v1`, `autoscaling/v2`: no HorizontalPodAutoscaler anywhere; the
///   controller manager's HPA controller is off with them.
/// - `batch/v1`: no Job or CronJob anywhere (the chart has no hooks); the job, cronjob and
///   ttl-after-finished controllers are off with it.
/// - `certificates.k8s.io/v1`: every certificate comes from the run's CA, none from a CSR;
///   the CSR controllers are off with it.
/// - `node.k8s.io/v1`: no RuntimeClass (kwok runs no containers); its admission plugin is
///   off with it.
///
/// `resource.k8s.io` (dynamic resource allocation) stays on although nothing claims a
/// device: the scheduler's DRA plugin is part of what a user of a real cluster reads in a
/// FailedScheduling event ("no new claims to deallocate"), which scenarios snapshot.
pub(super) const API_GROUPS_OFF: &[&str] =
    &["flowcontrol.apiserver.k8s.io/v1", "autoscaling/v1", "autoscaling/v2", "batch/v1", "certificates.k8s.io/v1", "node.k8s.io/v1"];

/// Default admission plugins turned off, each one a no-op here:
/// - `LimitRanger`, `ResourceQuota`: they act on LimitRange and ResourceQuota objects, and
///   there are none.
/// - `PodSecurity`: no namespace carries a `pod-security.kubernetes.io` label and the
///   default level is `privileged`, so it admits every pod anyway.
/// - `RuntimeClass`: no RuntimeClass (its API is off).
/// - `CertificateApproval`, `CertificateSigning`, `CertificateSubjectRestriction`,
///   `ClusterTrustBundleAttest`: CSRs and ClusterTrustBundles only; their APIs are off or
///   unused.
/// - `DefaultIngressClass`: Ingresses only; there are none.
/// - `MutatingAdmissionWebhook`, `ValidatingAdmissionWebhook`, `ValidatingAdmissionPolicy`:
///   nothing registers a webhook or a policy; off, the API server keeps no informers for
///   them.
///
/// Kept because scenarios depend on them: NamespaceLifecycle, ServiceAccount,
/// TaintNodesByCondition, Priority, DefaultTolerationSeconds (the short node-failure
/// tolerations), DefaultStorageClass (claims without a class get the sim's), and
/// StorageObjectInUseProtection, PersistentVolumeClaimResize.
pub(super) const ADMISSION_OFF: &[&str] = &[
    "LimitRanger",
    "ResourceQuota",
    "PodSecurity",
    "RuntimeClass",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "ClusterTrustBundleAttest",
    "DefaultIngressClass",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
];

/// Controller-manager controllers turned off: those of the API groups turned off above, and
/// - `resourcequota-controller`: there is no ResourceQuota (its admission plugin is off),
///   and it would still watch every quotable resource to keep usage counts;
/// - `validatingadmissionpolicy-status-controller`: there is no ValidatingAdmissionPolicy
///   (its admission plugin is off);
/// - `legacy-serviceaccount-token-cleaner-controller`: nothing creates the legacy token
///   Secrets it cleans up.
pub(super) const CONTROLLERS_OFF: &[&str] = &[
    "horizontal-pod-autoscaler-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "certificatesigningrequest-approving-controller",
    "certificatesigningrequest-cleaner-controller",
    "certificatesigningrequest-signing-controller",
    "resourcequota-controller",
    "validatingadmissionpolicy-status-controller",
    "legacy-serviceaccount-token-cleaner-controller",
];

/// Controllers turned off from the Kubernetes minor version that has them (an unknown name
/// in `--controllers` stops the controller manager, so each is named only where it exists):
/// - `podcertificaterequest-cleaner-controller` (from 1.34): it watches
///   certificates.k8s.io PodCertificateRequests, whose group is off; on 1.37, where the
///   feature is on by default, it would fail to list them over and over.
pub(super) const CONTROLLERS_OFF_FROM: &[(&str, u32)] = &[("podcertificaterequest-cleaner-controller", 34)];

/// `--runtime-config`'s value.
pub(super) fn runtime_config() -> String {
    API_GROUPS_OFF.iter().map(|g| format!("{g}=false")).collect::<Vec<_>>().join(",")
}

/// `--controllers`' value for Kubernetes 1.`minor`: every default controller but
/// [`CONTROLLERS_OFF`] and those of [`CONTROLLERS_OFF_FROM`] that this version has.
pub(super) fn controllers(minor: u32) -> String {
    let versioned = CONTROLLERS_OFF_FROM.iter().filter(|(_, from)| minor >= *from).map(|(c, _)| *c);
    std::iter::once("*".to_string())
        .chain(CONTROLLERS_OFF.iter().copied().chain(versioned).map(|c| format!("-{c}")))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::super::{apiserver_args, controller_manager_args, Layout, Ports, Timings};
    use super::*;
    use std::path::Path;

    fn flag(args: Vec<std::ffi::OsString>, name: &str) -> Option<String> {
        let prefix = format!("--{name}=");
        args.into_iter().filter_map(|a| a.into_string().ok()).find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
    }

    fn layout() -> Layout {
        Layout::new(Path::new("/tmp/lily-e2e-r0/cluster"))
    }

    #[test]
    fn the_apiserver_serves_no_group_and_runs_no_plugin_that_nothing_uses() {
        let a = || apiserver_args(&layout(), &Ports { apiserver: 6443 }, &Timings::default());
        assert_eq!(
            flag(a(), "runtime-config").as_deref(),
            Some(
                "flowcontrol.apiserver.k8s.io/v1=false,autoscaling/v1=false,autoscaling/v2=false,batch/v1=false,\
                 certificates.k8s.io/v1=false,node.k8s.io/v1=false"
            )
        );
        let off = flag(a(), "disable-admission-plugins").unwrap();
        assert_eq!(flag(a(), "feature-gates"), None, "every feature at its default, as in a real cluster");
        for kept in ["DefaultTolerationSeconds", "DefaultStorageClass", "ServiceAccount", "NamespaceLifecycle", "TaintNodesByCondition"] {
            assert!(!off.split(',').any(|p| p == kept), "{kept} is needed: {off}");
        }
        assert!(off.split(',').any(|p| p == "ValidatingAdmissionPolicy"), "{off}");
    }

    #[test]
    fn the_controller_manager_runs_every_default_controller_but_those_of_groups_turned_off() {
        let c = flag(controller_manager_args(&layout(), &Timings::default(), 34), "controllers").unwrap();
        assert!(c.starts_with("*,-"), "{c}");
        for kept in [
            "garbage-collector-controller",
            "node-lifecycle-controller",
            "persistentvolume-attach-detach-controller",
            "statefulset-controller",
        ] {
            assert!(!c.contains(kept), "{kept} is needed: {c}");
        }
        assert!(c.split(',').any(|x| x == "-job-controller"), "{c}");
    }

    #[test]
    fn a_controller_is_named_only_on_the_versions_that_have_it() {
        let on = |minor| flag(controller_manager_args(&layout(), &Timings::default(), minor), "controllers").unwrap();
        assert!(!on(32).contains("podcertificaterequest"), "1.32 has no such controller: {}", on(32));
        for minor in [34, 37] {
            assert!(on(minor).split(',').any(|x| x == "-podcertificaterequest-cleaner-controller"), "1.{minor}: {}", on(minor));
        }
    }

    #[test]
    fn a_group_kept_for_scenarios_is_never_turned_off() {
        for kept in [
            "apps/",
            "storage.k8s.io/",
            "policy/",
            "coordination.k8s.io/",
            "events.k8s.io/",
            "discovery.k8s.io/",
            "rbac.",
            "apiextensions.",
            "resource.k8s.io/",
        ] {
            assert!(!API_GROUPS_OFF.iter().any(|g| g.starts_with(kept)), "{kept}");
        }
    }
}
