//! How a `--mount` value is written for docker's CLI: fields in Go's encoding/csv quoting,
//! which docker parses `--mount` with. Pure.

use std::path::Path;

/// Whether a mount may be written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A `--mount type=bind` value, each field quoted for docker's CSV parser when needed.
pub fn bind_mount(src: &Path, dst: &Path, access: Access) -> String {
    let mut value = format!(
        "type=bind,{},{}",
        csv_quote(&format!("src={}", src.display())),
        csv_quote(&format!("dst={}", dst.display()))
    );
    if access == Access::ReadOnly {
        value.push_str(",readonly");
    }
    value
}

pub fn csv_quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Splits one CSV record the way Go's encoding/csv reads it (docker parses --mount with it):
/// fields separated by commas, a field in double quotes may hold commas and "" for a quote.
pub fn csv_fields(record: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = record.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if field.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_values_survive_docker_csv() {
        let ro = bind_mount(
            Path::new("/usr/bin/asme"),
            Path::new("/.asme-init"),
            Access::ReadOnly,
        );
        assert_eq!(ro, "type=bind,src=/usr/bin/asme,dst=/.asme-init,readonly");
        let odd = bind_mount(Path::new("/a,b/\"c\""), Path::new("/x"), Access::ReadWrite);
        assert_eq!(odd, "type=bind,\"src=/a,b/\"\"c\"\"\",dst=/x");
        // And docker's reading of it gives the path back.
        assert_eq!(csv_fields(&odd)[1], "src=/a,b/\"c\"");
    }

    #[test]
    fn csv_round_trip() {
        for record in ["a,b", "\"a,b\",c", "\"x\"\"y\",z", "", "k=v"] {
            let fields = csv_fields(record);
            let again: Vec<_> = fields.iter().map(|f| csv_quote(f)).collect();
            assert_eq!(csv_fields(&again.join(",")), fields, "{record}");
        }
    }
}
