//! Any modelreg message as canonical proto3 JSON (field names as in the
//! `.proto` files, enums by name, 64-bit integers as numbers so `jq` can do
//! arithmetic on versions and sequences).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(modelreg_api::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set is valid")
});

/// Converts `msg`, whose full protobuf name is `full_name` (for example
/// `modelreg.v1.ModelVersion`), to JSON.
pub fn to_json<M: prost::Message>(msg: &M, full_name: &str) -> serde_json::Value {
    let Some(desc) = POOL.get_message_by_name(full_name) else {
        return serde_json::Value::Null;
    };
    let bytes = msg.encode_to_vec();
    let Ok(dynamic) = DynamicMessage::decode(desc, bytes.as_slice()) else {
        return serde_json::Value::Null;
    };
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(serde_json::Value::Null)
}

/// Parses proto3 JSON (proto or lowerCamelCase field names, enums by name)
/// into `M`, whose full protobuf name is `full_name`. Unknown fields are
/// refused, so a typo is an error rather than a silently ignored setting.
pub fn from_json<M: prost::Message + Default>(text: &str, full_name: &str) -> Result<M, String> {
    let desc = POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(desc, &mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    dynamic.transcode_to().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn versions_print_with_proto_names_and_numeric_versions() {
        let v = pb::ModelVersion {
            model: "fraud".into(),
            version: 3,
            stage: pb::Stage::Staging as i32,
            ..Default::default()
        };
        let j = to_json(&v, "modelreg.v1.ModelVersion");
        assert_eq!(j["version"], 3);
        assert_eq!(j["stage"], "STAGE_STAGING");
        assert_eq!(j["artifact_uri"], "");
    }

    #[test]
    fn policies_parse_from_json_with_presence() {
        let p: pb::Policy = from_json(
            r#"{"approval_required_for": {"stages": []}, "min_approvals": 2,
                "gates": {"gates": [{"metric": "auc", "min_value": 0.9}]}}"#,
            "modelreg.v1.Policy",
        )
        .unwrap();
        assert_eq!(
            p.approval_required_for,
            Some(pb::StageList { stages: vec![] })
        );
        assert_eq!(p.min_approvals, Some(2));
        assert_eq!(p.gates.unwrap().gates[0].min_value, Some(0.9));
        assert!(from_json::<pb::Policy>(r#"{"min_aprovals": 2}"#, "modelreg.v1.Policy").is_err());
    }
}
