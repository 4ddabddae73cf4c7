//! Operation inputs: a `Parameters` resource (POST) or query parameters (GET, or POST with an
//! empty body), read the same way.

use serde_json::Value;

use super::OperationError;

/// The inputs of one operation call.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The `Parameters` body, when one was sent.
    pub body: Option<Value>,
    /// Query parameters.
    pub query: Vec<(String, String)>,
}

impl Inputs {
    /// Inputs from a body (read only when it is a `Parameters` resource) and the query string.
    pub fn new(body: Option<Value>, query: Vec<(String, String)>) -> Inputs {
        Inputs { body, query }
    }

    /// Every `parameter` of a `Parameters` body.
    fn parameters(&self) -> impl Iterator<Item = &Value> + '_ {
        self.body
            .as_ref()
            .filter(|b| b.get("resourceType").and_then(Value::as_str) == Some("Parameters"))
            .and_then(|b| b.get("parameter"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// Every `parameter` named `name` of the body.
    pub fn parts<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.parameters().filter(move |p| p.get("name").and_then(Value::as_str) == Some(name))
    }

    /// The names of the body's parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.parameters().filter_map(|p| p.get("name").and_then(Value::as_str))
    }

    /// A primitive input: the first `value[x]` of parameter `name`, else the query parameter.
    pub fn text(&self, name: &str) -> Option<String> {
        for p in self.parts(name) {
            if let Some(obj) = p.as_object() {
                for (k, v) in obj {
                    if k.starts_with("value") {
                        return match v {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            Value::Bool(b) => Some(b.to_string()),
                            _ => None,
                        };
                    }
                }
            }
        }
        self.query.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// The `resource` of parameter `name`.
    pub fn resource<'a>(&'a self, name: &'a str) -> Option<&'a Value> {
        self.parts(name).find_map(|p| p.get("resource"))
    }

    /// The `valueMeta` of parameter `name` (`$meta-add` / `$meta-delete`).
    pub fn meta<'a>(&'a self, name: &'a str) -> Result<&'a Value, OperationError> {
        self.parts(name).find_map(|p| p.get("valueMeta")).ok_or_else(|| OperationError::BadParameter {
            name: name.into(),
            reason: "a Parameters body with a valueMeta parameter of that name is required".into(),
        })
    }
}

/// `Parameters` with one `return` parameter holding `meta`.
pub fn return_meta(meta: Value) -> Value {
    serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_before_query() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "mode", "valueCode": "update"},
            {"name": "resource", "resource": {"resourceType": "Patient"}},
            {"name": "meta", "valueMeta": {"tag": []}}
        ]});
        let i = Inputs::new(Some(body), vec![("mode".into(), "create".into()), ("profile".into(), "p".into())]);
        assert_eq!(i.text("mode").as_deref(), Some("update"));
        assert_eq!(i.text("profile").as_deref(), Some("p"));
        assert_eq!(i.resource("resource").unwrap()["resourceType"], "Patient");
        assert!(i.meta("meta").is_ok());
        assert!(i.meta("other").is_err());
        let not_params = Inputs::new(Some(json!({"resourceType": "Patient", "parameter": [{"name": "mode", "valueCode": "x"}]})), vec![]);
        assert_eq!(not_params.text("mode"), None, "only a Parameters body carries inputs");
    }
}
