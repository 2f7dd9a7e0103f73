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
}
