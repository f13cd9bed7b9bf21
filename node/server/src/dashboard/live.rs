//! Keeping a page live: a Server-Sent Events stream of the page's `#view` fragment, sent
//! when it changed, at most twice a second. The figures are copied under the core's lock by
//! the page's snapshot and rendered after it is released, so an open dashboard costs the
//! sales path a short read at most twice a second, never a render under the lock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::session::StreamPass;
use crate::http::AppState;

/// At most one update per this long per connection.
const MIN_GAP: Duration = Duration::from_millis(500);
/// A page is looked at again this often even when the core did not change: its rates and the
/// ages of what it heard move with the clock.
const CLOCK_TICK: Duration = Duration::from_secs(5);

/// The stream of `render(snapshot(state))`, first at once, then on each change. It ends when
/// the snapshot is `None` (the event is gone, or the core stopped) or when the session that
/// opened it ends (logout, expiry), and it holds one of the node's stream permits meanwhile.
pub fn stream<T, S, R>(state: Arc<AppState>, pass: StreamPass, snapshot: S, render: R) -> Response
where
    T: Send + 'static,
    S: Fn(&AppState) -> Option<T> + Send + Sync + 'static,
    R: Fn(&T) -> String + Send + Sync + 'static,
{
    let changes = state.core.changes();
    let updates = futures_util::stream::unfold(
        (changes, state, pass, snapshot, render, None::<String>),
        |(mut changes, state, pass, snapshot, render, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(MIN_GAP).await;
                    // Err: the clock tick came first. Ok(Err): the core is gone.
                    if let Ok(Err(_)) = tokio::time::timeout(CLOCK_TICK, changes.changed()).await {
                        return None;
                    }
                }
                if !state
                    .sessions
                    .alive(&pass.session, crate::driver::wall_ms())
                {
                    return None;
                }
                let figures = snapshot(&state)?;
                let html = render(&figures);
                if last.as_deref() != Some(html.as_str()) {
                    let item = SseEvent::default().event("view").data(&html);
                    return Some((
                        Ok::<_, Infallible>(item),
                        (changes, state, pass, snapshot, render, Some(html)),
                    ));
                }
            }
        },
    );
    Sse::new(updates)
        .keep_alive(KeepAlive::default())
        .into_response()
}
