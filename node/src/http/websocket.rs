//! `GET /_subscriptions/ws` (also under `/tenant/{id}`): the R4 websocket channel's endpoint. The
//! upgrade request goes through the API's authentication middleware like any other; on the
//! socket the client sends `bind {id}` for a websocket Subscription it may read and gets
//! `bound {id}` or `error {id} {reason}`. The connections, their bindings and the pings are the
//! hub's ([`crate::subscription::websocket`]).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Op;
use crate::http::error::ApiError;
use crate::http::guard;
use crate::http::negotiate::Ctx;
use crate::http::{AppState, RequestError};
use crate::subscription::websocket::{Hub, Key, MAX_FRAME, OUTBOX};
use crate::subscription::{spec, SubscriptionError};

/// `GET /_subscriptions/ws`.
pub async fn endpoint(req: HttpRequest, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let subs = st.subscriptions.clone();
    if !subs.enabled() {
        return Err(SubscriptionError::Disabled.into());
    }
    let ctx = Ctx::new(&req, &st)?;
    guard::require_ctx(&ctx, &st, Op::READ, "Subscription")?;
    let slot = Hub::claim(&subs)?;
    let (resp, mut session, stream) =
        actix_ws::handle(&req, body).map_err(|e| RequestError::BadHeader { name: "Upgrade".into(), reason: format!("not a websocket handshake: {e}") })?;
    let mut stream = stream.max_frame_size(MAX_FRAME);
    let conn = subs.hub.next.fetch_add(1, Ordering::SeqCst);
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let (tx, mut rx) = mpsc::channel::<String>(OUTBOX);
        let mut bound: Vec<Key> = Vec::new();
        loop {
            tokio::select! {
                m = stream.recv() => match m {
                    Some(Ok(actix_ws::Message::Text(text))) => {
                        let reply = command(&st, &ctx, &text, &mut bound, conn, &tx);
                        if session.text(reply).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(actix_ws::Message::Ping(b))) => {
                        if session.pong(&b).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {
                        if session.text("error send text commands: bind {subscription id}").await.is_err() {
                            break;
                        }
                    }
                },
                p = rx.recv() => match p {
                    Some(p) => {
                        if session.text(p).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        st.subscriptions.hub.unbind(conn, &bound);
        let _ = session.close(None).await;
    });
    Ok(resp)
}

/// Answers one client command.
fn command(st: &AppState, ctx: &Ctx, text: &str, bound: &mut Vec<Key>, conn: u64, tx: &mpsc::Sender<String>) -> String {
    let text = text.trim();
    let Some(id) = text.strip_prefix("bind ").map(str::trim) else {
        return "error unknown command: send bind {subscription id}".into();
    };
    if !crate::fhir::valid_id(id) {
        return "error bind needs a Subscription id".into();
    }
    let key: Key = (ctx.tenant.as_deref().map(String::from), id.to_string());
    if bound.contains(&key) {
        return format!("bound {id}");
    }
    if bound.len() >= st.subscriptions.rules.cfg.max_bindings_per_socket {
        return format!("error {id} this connection has bound {} subscriptions, the most it may (subscriptions.max_bindings_per_socket)", bound.len());
    }
    // Not found and not readable are one answer: existence is not disclosed.
    let hidden = format!("error {id} no websocket Subscription {id} that you may read");
    let Ok(grant) = guard::require_ctx(ctx, st, Op::READ, "Subscription") else { return hidden };
    let Ok((_, rec)) = ctx.store.read("Subscription", id) else { return hidden };
    if guard::check_stored(st, &grant, "Subscription", id, rec.body()).is_err() {
        return hidden;
    }
    let Ok(body) = serde_json::from_slice::<Value>(rec.body()) else { return hidden };
    if body.pointer("/channel/type").and_then(Value::as_str) != Some("websocket") {
        return format!("error {id} Subscription {id} does not have a websocket channel");
    }
    if !matches!(spec::status(&body), "active" | "requested") {
        return format!("error {id} Subscription {id} is {}", spec::status(&body));
    }
    st.subscriptions.hub.bind(key.clone(), conn, tx.clone());
    bound.push(key);
    format!("bound {id}")
}
