//! The module from the README's tour: `cargo run -p rookery-demo --example shop`, then try
//! `rookery client 127.0.0.1:3250` with `request connector.entry.login {"uid":"u1"}` and
//! `request shop.store.buy {"item":"sword","count":1}`.

use std::sync::Arc;

use rookery::{Config, Context, Error, Json, Module, ModuleInit, Server};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Buy {
    item: String,
    count: u32,
}

#[derive(Serialize)]
struct Bought {
    item: String,
    total: u32,
}

struct Shop;

impl Module for Shop {
    fn name(&self) -> &str {
        "shop"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler(
            "store.buy",
            |ctx: Context, Json(req): Json<Buy>| async move {
                let uid = ctx.require_uid()?;
                if req.count == 0 {
                    return Err(Error::custom("SHOP-EMPTY", "nothing to buy"));
                }
                ctx.push("onBought", Json(&req.item))?;
                tracing::info!(%uid, item = %req.item, "bought");
                Ok(Json(Bought {
                    item: req.item,
                    total: req.count,
                }))
            },
        )
        .login_required();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(None)?;
    config.gateway.tcp = Some("127.0.0.1:3250".into());
    let server = rookery_demo::modules(Server::builder(config))
        .module(Shop)
        .start()
        .await?;
    server.run_until(rookery::shutdown_signal()).await;
    Ok(())
}
