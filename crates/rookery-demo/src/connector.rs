//! `connector`: logs clients in by binding a uid to their session.

use std::sync::Arc;

use rookery::{Context, Error, Json, Module, ModuleInit};
use serde::{Deserialize, Serialize};

/// Longest uid accepted.
const MAX_UID_LEN: usize = 64;

/// The login module.
#[derive(Debug, Default, Clone, Copy)]
pub struct Connector;

/// `connector.entry.login` request and response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// The user id to bind.
    pub uid: String,
}

impl Module for Connector {
    fn name(&self) -> &str {
        "connector"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler("entry.login", login);
        Ok(())
    }
}

async fn login(ctx: Context, Json(req): Json<Login>) -> Result<Json<Login>, Error> {
    if req.uid.is_empty() || req.uid.len() > MAX_UID_LEN {
        return Err(Error::bad_request(format!(
            "uid must be 1 to {MAX_UID_LEN} bytes"
        )));
    }
    ctx.bind(&req.uid).await?;
    Ok(Json(req))
}
