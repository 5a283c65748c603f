//! The per-service identities against a real nats-server started with the generated
//! configuration: each forbidden action is refused by the server, each allowed one works.

mod cluster;
mod helpers;
mod ownership;
mod permissions;
mod tls;
