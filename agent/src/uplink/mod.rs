//! The uplink: readings → FHIR R4 transaction Bundles → the server, over mutual TLS.
//!
//! Layering (STYLE.md): everything that decides is pure and unit-tested; only `client` does I/O.
//!
//! - [`fhir`] (pure): codes and units (fhir-mapping.md §1-§3), the observation identifier of the
//!   idempotency rule (§5.1, computed once by the pipeline), and the transaction Bundle with
//!   conditional create on every entry (§5.2-§5.3).
//! - [`outcome`] (pure): the server's answer → `Accepted | EntriesFailed | Retry | Reject |
//!   Split | Refused | Unauthorized` (§5.4-§5.5). Only HTTP 200 with every entry's
//!   `response.status` starting with 201 or 200, or an empty 200, is `Accepted`.
//! - [`scheduler`] (pure): the uploader's decisions as a state machine (bisect queue, backoff,
//!   consecutive single-reading rejections, pause episodes with a capped probe schedule); takes
//!   a verdict and `now`, returns the one effect to carry out.
//! - [`backoff`] (pure): exponential backoff with jitter, the server's `Retry-After` as a floor.
//! - [`batch`] (pure): the adaptive batch size (grows while fast, shrinks on timeouts and 413,
//!   within `uplink.batch_size`).
//! - [`client`]: reqwest on rustls/ring, trusting only the configured CA, presenting the
//!   gateway's client certificate; no redirects, no proxies from the environment. Reached
//!   through the `BundleSender` trait; a failed exchange is a `SendError` classified by type.
//! - [`oauth`]: optional OAuth 2.0 (SMART Backend Services): the signed client assertion, the
//!   token answer and the cache decision are pure; the token request goes through the client's
//!   own HTTP client (mutual TLS still applies).
//! - [`limits`] (pure): what a hostile server's answer may cost (body size, JSON depth,
//!   redirects, time), and the JSON depth scan run before serde.
pub mod backoff;
pub mod batch;
pub mod client;
pub mod fhir;
mod json_out;
pub mod limits;
pub mod metering;
pub mod oauth;
pub mod outcome;
pub mod scheduler;

#[cfg(test)]
mod golden;
