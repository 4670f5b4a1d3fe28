//! Deserializers for fields that take either a scalar or a structured form.
//!
//! YAML users write `x-canary: true` or `port: 8080` and mean strings, so
//! booleans and numbers are accepted where a string is expected.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, value::SeqAccessDeserializer, Deserialize, Deserializer, Visitor};

/// A string (or bool/number read as a string), or a map deserialized as `M`.
pub fn string_or_map<'de, D, M, T>(
    deserializer: D,
    expecting: &'static str,
    from_string: impl FnOnce(&str) -> T,
    from_map: impl FnOnce(M) -> T,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    M: Deserialize<'de>,
{
    enum Either<M> {
        Text(String),
        Map(M),
    }
    struct EitherVisitor<M>(&'static str, PhantomData<M>);
    impl<'de, M: Deserialize<'de>> Visitor<'de> for EitherVisitor<M> {
        type Value = Either<M>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Either::Text(v.to_owned()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Either::Text(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Either::Text(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Either::Text(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Either::Text(v.to_string()))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            M::deserialize(MapAccessDeserializer::new(map)).map(Either::Map)
        }
    }
    match deserializer.deserialize_any(EitherVisitor::<M>(expecting, PhantomData))? {
        Either::Text(text) => Ok(from_string(&text)),
        Either::Map(map) => Ok(from_map(map)),
    }
}

/// A string, or a list of strings.
pub fn string_or_seq<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    from_string: impl FnOnce(String) -> T,
    from_seq: impl FnOnce(Vec<String>) -> T,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    struct EitherVisitor(&'static str);
    impl<'de> Visitor<'de> for EitherVisitor {
        type Value = Either;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Either::One(v.to_owned()))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<String>::deserialize(SeqAccessDeserializer::new(seq)).map(Either::Many)
        }
    }
    match deserializer.deserialize_any(EitherVisitor(expecting))? {
        Either::One(one) => Ok(from_string(one)),
        Either::Many(many) => Ok(from_seq(many)),
    }
}
