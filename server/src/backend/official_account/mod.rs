//! The WeChat Official Account backend — groundwork. So far: the callback crypto ([`crypto`]),
//! checked against every published vector, and the callback XML ([`xml`]: a hardened reader,
//! typed pushes, passive replies). The webhook, the REST client and the `Backend`
//! implementation are not built yet, and `--backend official-account` does not exist.

pub mod crypto;
pub mod xml;
