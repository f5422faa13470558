//! placeholder until the validation module lands
#![allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}
pub fn validate_id(_field: &'static str, _value: &str) -> Result<(), InvalidInput> {
    Ok(())
}
pub fn validate_address(_field: &'static str, _value: &str) -> Result<(), InvalidInput> {
    Ok(())
}
