//! The verification processor (a citizen's data checked against the government registry)
//! will live here; so far it holds the registry's wire codec, [`xml`].

pub mod xml;
