//! The operator dashboard, served by every node at `/dashboard`: the cluster as *this*
//! region sees it. Pages are rendered on the server (no script or asset from anywhere else)
//! and kept live over Server-Sent Events; every figure is copied under the core's lock and
//! rendered after it.
//!
//! - `session`: login with the operator token, the session cookie, CSRF tokens, logout.
//! - `events`: every event's sell-through, sale rate and sales state.
//! - `event`: one event's pools per region, staleness, rates, handoffs, seat map, sales buttons.
//! - `cluster`: links, readiness, durable record index.
//! - `live`: the update stream every page uses; `history`: sampled sales for the rate charts;
//!   `html`: layout, escaping and the SVG drawings.

mod cluster;
mod event;
mod events;
mod history;
mod html;
mod live;
mod session;

pub use history::{sample as sample_history, SaleHistory};
pub use session::{login, logout, Sessions};

pub use cluster::{show as cluster, stream as cluster_stream};
pub use event::{set_sales, show as event, stream as event_stream};
pub use events::{live_js, show, stream};

// The handlers' OpenAPI descriptions, for `openapi.rs`.
pub(crate) use cluster::{__path_show as __path_cluster, __path_stream as __path_cluster_stream};
pub(crate) use event::{
    __path_set_sales, __path_show as __path_event, __path_stream as __path_event_stream,
};
pub(crate) use events::{__path_live_js, __path_show, __path_stream};
pub(crate) use session::{__path_login, __path_logout};
