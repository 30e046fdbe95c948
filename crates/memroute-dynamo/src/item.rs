//! The table's item format and DynamoDB's item size rule.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;

use crate::clock::is_expired;
use crate::DynamoConfig;

/// DynamoDB's item size limit (400 KB), attribute names included.
pub const MAX_ITEM_SIZE: usize = 400 * 1024;

/// DynamoDB's partition key limit for a string key, in UTF-8 bytes.
pub const MAX_ID_LEN: usize = 2048;

/// The most a number attribute can take: up to 38 significant digits at one
/// byte per two digits, plus one. Our numbers have at most 20 digits, so
/// this over-counts, which only makes the size check stricter.
const NUMBER_SIZE: usize = 21;

/// One memcached item as stored in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Bytes,
    pub flags: u32,
    /// Absolute Unix time; 0 = never (attribute absent).
    pub expires: i64,
    /// The version / CAS unique; 0 when the attribute is absent (an item
    /// written by another program).
    pub cas: u64,
}

impl Item {
    pub fn is_live(&self, now: i64) -> bool {
        !is_expired(self.expires, now)
    }

    /// Bytes this item holds in the write-behind queue (for its bound).
    pub fn queue_bytes(&self, id: &str) -> usize {
        self.value.len() + id.len() + 64
    }
}

/// The attribute names of the table.
#[derive(Debug, Clone)]
pub struct Names {
    pub key: String,
    pub value: String,
    pub flags: String,
    pub expires: String,
    pub cas: String,
}

impl Names {
    pub fn from_config(c: &DynamoConfig) -> Self {
        Names {
            key: c.key_attr.clone(),
            value: c.value_attr.clone(),
            flags: c.flags_attr.clone(),
            expires: c.expires_attr.clone(),
            cas: c.cas_attr.clone(),
        }
    }

    /// The size DynamoDB counts for an item with this id and value length:
    /// every attribute's name plus its value (an upper bound for numbers).
    pub fn item_size(&self, id: &str, value_len: usize, has_expiry: bool) -> usize {
        let mut size = self.key.len() + id.len() + self.value.len() + value_len;
        size += self.flags.len() + NUMBER_SIZE + self.cas.len() + NUMBER_SIZE;
        if has_expiry {
            size += self.expires.len() + NUMBER_SIZE;
        }
        size
    }

    pub fn fits(&self, id: &str, value_len: usize) -> bool {
        self.item_size(id, value_len, true) <= MAX_ITEM_SIZE
    }

    pub fn item_attrs(&self, id: &str, item: &Item) -> HashMap<String, AttributeValue> {
        let mut m = HashMap::with_capacity(5);
        m.insert(self.key.clone(), AttributeValue::S(id.to_owned()));
        m.insert(
            self.value.clone(),
            AttributeValue::B(Blob::new(item.value.to_vec())),
        );
        m.insert(
            self.flags.clone(),
            AttributeValue::N(item.flags.to_string()),
        );
        if item.expires != 0 {
            m.insert(
                self.expires.clone(),
                AttributeValue::N(item.expires.to_string()),
            );
        }
        m.insert(self.cas.clone(), AttributeValue::N(item.cas.to_string()));
        m
    }

    /// Reads an item. A string value (as the AWS SDK for PHP session handler
    /// writes by default) is taken as its UTF-8 bytes; missing attributes
    /// read as empty / 0.
    pub fn read_item(&self, attrs: &HashMap<String, AttributeValue>) -> Item {
        let value = match attrs.get(&self.value) {
            Some(AttributeValue::B(b)) => Bytes::copy_from_slice(b.as_ref()),
            Some(AttributeValue::S(s)) => Bytes::copy_from_slice(s.as_bytes()),
            _ => Bytes::new(),
        };
        Item {
            value,
            flags: number(attrs.get(&self.flags)).map_or(0, |n| n as u32),
            expires: number(attrs.get(&self.expires)).map_or(0, |n| n.max(0) as i64),
            cas: number(attrs.get(&self.cas)).map_or(0, |n| n.max(0) as u64),
        }
    }
}

/// A number attribute as an integer (fractions dropped, out-of-range
/// values clamped).
fn number(v: Option<&AttributeValue>) -> Option<i128> {
    let AttributeValue::N(n) = v? else {
        return None;
    };
    if let Ok(i) = n.parse::<i128>() {
        return Some(i);
    }
    n.parse::<f64>().ok().map(|f| f as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let names = Names::from_config(&DynamoConfig::default());
        let item = Item {
            value: Bytes::from_static(b"hello"),
            flags: 7,
            expires: 1_900_000_000,
            cas: 42,
        };
        let attrs = names.item_attrs("k", &item);
        assert_eq!(names.read_item(&attrs), item);
        let never = Item { expires: 0, ..item };
        let attrs = names.item_attrs("k", &never);
        assert!(!attrs.contains_key("expires"));
        assert_eq!(names.read_item(&attrs), never);
        // "id" + 1 + "value" + 5 + "flags" + 21 + "cas" + 21 + "expires" + 21
        assert_eq!(
            names.item_size("k", 5, true),
            2 + 1 + 5 + 5 + 5 + 21 + 3 + 21 + 7 + 21
        );
        assert!(names.fits("k", 400 * 1024 - 200));
        assert!(!names.fits("k", 400 * 1024));
    }

    #[test]
    fn foreign_items() {
        let names = Names::from_config(&DynamoConfig::default());
        let mut attrs = HashMap::new();
        attrs.insert("id".into(), AttributeValue::S("x".into()));
        attrs.insert("value".into(), AttributeValue::S("php data".into()));
        attrs.insert("expires".into(), AttributeValue::N("1.9E9".into()));
        let item = names.read_item(&attrs);
        assert_eq!(&item.value[..], b"php data");
        assert_eq!(item.expires, 1_900_000_000);
        assert_eq!((item.flags, item.cas), (0, 0));
    }
}
