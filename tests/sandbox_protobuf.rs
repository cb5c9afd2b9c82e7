#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sandbox's protobuf field table against the Kubernetes protobuf types themselves: a
//! Deployment encoded by k8s-pb (prost), in kube-apiserver's envelope, decodes to the JSON
//! kube-apiserver would read — special types included (Quantity, IntOrString, Time, bytes).

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::json;

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat()
}

#[test]
fn a_deployment_encoded_by_k8s_pb_decodes_to_the_json_kube_apiserver_reads() {
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            creation_timestamp: Some(meta::Time { seconds: Some(1_767_225_600), nanos: Some(0) }),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString { r#type: Some(1), int_val: None, str_val: Some("25%".into()) }),
                    max_unavailable: Some(IntOrString { r#type: Some(0), int_val: Some(1), str_val: None }),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_owned(), "web".to_owned())].into(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    host_ipc: Some(false),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![core::Container {
                        name: Some("app".into()),
                        image: Some("registry.example.com/web:1.27".into()),
                        args: vec!["--port".into(), "8080".into()],
                        ports: vec![core::ContainerPort { container_port: Some(8080), ..Default::default() }],
                        env: vec![core::EnvVar {
                            name: Some("MODE".into()),
                            value: Some("prod".into()),
                            ..Default::default()
                        }],
                        resources: Some(core::ResourceRequirements {
                            limits: [("memory".to_owned(), Quantity { string: Some("128Mi".into()) })].into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let body = envelope("apps/v1", "Deployment", deployment.encode_to_vec());
    let decoded = reflex::sandbox::protobuf::decode(&body).unwrap();
    assert_eq!(
        decoded,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "hostIPC": false,
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": "app", "image": "registry.example.com/web:1.27", "args": ["--port", "8080"],
                            "ports": [{"containerPort": 8080}], "env": [{"name": "MODE", "value": "prod"}],
                            "resources": {"limits": {"memory": "128Mi"}}
                        }]
                    }
                }
            }
        }),
        "a replica count of 0 is kept (proto2 presence), names are the JSON names"
    );
}

#[test]
fn a_secret_keeps_its_bytes_and_a_truncated_or_unknown_field_is_refused() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta { name: Some("token".into()), ..Default::default() }),
        data: [("key".to_owned(), b"s3cr3t\x00\xff".to_vec())].into(),
        ..Default::default()
    };
    let raw = secret.encode_to_vec();
    let decoded = reflex::sandbox::protobuf::decode(&envelope("v1", "Secret", raw.clone())).unwrap();
    assert_eq!(decoded["data"]["key"], "czNjcjN0AP8=");
    let cut = envelope("v1", "Secret", raw[..raw.len() - 3].to_vec());
    assert!(reflex::sandbox::protobuf::decode(&cut).is_err(), "a truncated body is refused, not half-read");
    let mut unknown = raw;
    unknown.extend([0xf8, 0x06, 0x01]); // field 111, varint 1: not in Secret
    let err = reflex::sandbox::protobuf::decode(&envelope("v1", "Secret", unknown)).unwrap_err();
    assert!(err.contains("Secret has no field 111"), "{err}");
}
