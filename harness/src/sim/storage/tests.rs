use super::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
use k8s_openapi::api::storage::v1::{VolumeAttachmentSource, VolumeAttachmentSpec, VolumeAttachmentStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn pvc(annotations: &[(&str, &str)]) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data-db-0".into()),
            namespace: Some("lily".into()),
            uid: Some("1234-abcd".into()),
            resource_version: Some("42".into()),
            annotations: Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some("gp2".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity("5Gi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn claims_are_taken_only_when_handed_to_this_driver() {
    assert!(claim_to_provision(&pvc(&[])).is_none());
    assert!(claim_to_provision(&pvc(&[(STORAGE_PROVISIONER[0], "ebs.csi.aws.com")])).is_none());
    let c = claim_to_provision(&pvc(&[(STORAGE_PROVISIONER[0], DRIVER), (SELECTED_NODE, "sim-a1")])).unwrap();
    assert_eq!(
        c,
        Claim {
            namespace: "lily".into(),
            name: "data-db-0".into(),
            uid: "1234-abcd".into(),
            storage_class: "gp2".into(),
            selected_node: Some("sim-a1".into())
        }
    );
    let mut bound = pvc(&[(STORAGE_PROVISIONER[1], DRIVER)]);
    assert!(claim_to_provision(&bound).is_some());
    bound.spec.as_mut().unwrap().volume_name = Some("pvc-1234-abcd".into());
    assert!(claim_to_provision(&bound).is_none());
}

#[test]
fn provisioned_pv_is_pinned_to_the_zone_and_prebound_to_the_claim() {
    let sc = storage_class(&RunId::new(), &SimOptions::default());
    let pv = build_pv(&pvc(&[]), &sc, "zone-a", "vol-0123456789abcdef0", Some("r1")).unwrap();
    assert_eq!(pv.name_any(), "pvc-1234-abcd");
    assert_eq!(pv.annotations()[PROVISIONED_BY], DRIVER);
    assert_eq!(pv.labels()[RUN_LABEL], "r1");
    let spec = pv.spec.as_ref().unwrap();
    let csi = spec.csi.as_ref().unwrap();
    assert_eq!((csi.driver.as_str(), csi.volume_handle.as_str(), csi.fs_type.as_deref()), (DRIVER, "vol-0123456789abcdef0", Some("ext4")));
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "5Gi");
    assert_eq!(spec.access_modes.as_ref().unwrap(), &["ReadWriteOnce"]);
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(spec.storage_class_name.as_deref(), Some("gp2"));
    let cr = spec.claim_ref.as_ref().unwrap();
    assert_eq!((cr.namespace.as_deref(), cr.name.as_deref(), cr.uid.as_deref()), (Some("lily"), Some("data-db-0"), Some("1234-abcd")));
    assert_eq!(pv_zones(&pv), ["zone-a"]);
}

#[test]
fn the_storage_class_is_the_labelled_default_wait_for_first_consumer_class() {
    let run = RunId::new();
    let sc = storage_class(&run, &SimOptions::default());
    assert_eq!(sc.name_any(), "gp2");
    assert_eq!(sc.provisioner, DRIVER);
    assert_eq!(sc.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(sc.annotations()[DEFAULT_CLASS], "true");
    assert_eq!(sc.labels()[RUN_LABEL], run.as_str());
}

#[test]
fn volume_handles_look_like_ebs_ids() {
    let h = volume_handle();
    assert_eq!(h.len(), 21, "{h}");
    assert!(h.starts_with("vol-") && h[4..].chars().all(|c| c.is_ascii_hexdigit()));
}

fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(ZONE_LABEL.to_string(), zone.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn va(name: &str, node: &str, attached: bool) -> VolumeAttachment {
    VolumeAttachment {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: VolumeAttachmentSpec {
            attacher: DRIVER.into(),
            node_name: node.into(),
            source: VolumeAttachmentSource { persistent_volume_name: Some("pvc-1234-abcd".into()), ..Default::default() },
        },
        status: Some(VolumeAttachmentStatus { attached, ..Default::default() }),
    }
}

#[test]
fn the_cloud_refuses_cross_zone_and_double_attachments() {
    let sc = storage_class(&RunId::new(), &SimOptions::default());
    let pv = build_pv(&pvc(&[]), &sc, "zone-a", "vol-1", None).unwrap();
    let a1 = va("csi-a1", "sim-a1", false);
    assert_eq!(attach_verdict(&a1, &pv, Some(&node("sim-a1", "zone-a")), &[]), Ok(()));
    let b1 = va("csi-b1", "sim-b1", false);
    assert!(attach_verdict(&b1, &pv, Some(&node("sim-b1", "zone-b")), &[]).unwrap_err().contains("zone"));
    let a2 = va("csi-a2", "sim-a2", false);
    let others = [Arc::new(va("csi-a1", "sim-a1", true))];
    assert_eq!(
        attach_verdict(&a2, &pv, Some(&node("sim-a2", "zone-a")), &others),
        Err("volume vol-1 is already attached to instance sim-a1".into())
    );
    let mut detaching = va("csi-a1", "sim-a1", true);
    detaching.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    assert_eq!(attach_verdict(&a2, &pv, Some(&node("sim-a2", "zone-a")), &[Arc::new(detaching)]), Ok(()));
}
