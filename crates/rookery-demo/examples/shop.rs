//! The module from the README's tour: `cargo run -p rookery-demo --example shop`, then try
//! `rookery client 127.0.0.1:3250` with `request connector.entry.login {"uid":"u1"}` and
//! `request shop.store.buy {"item":"sword","count":1}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rookery::middleware::{Middleware, Next};
use rookery::{
    async_trait, Bytes, Config, Context, Error, Json, Module, ModuleInit, Push, Route, Server,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Buy {
    item: String,
    count: u32,
}

#[derive(Serialize, Deserialize)]
struct Bought {
    item: String,
    total: u32,
}

/// Declared once: the handler and every RPC caller are checked against these types.
const BUY: Route<Json<Buy>, Json<Bought>> = Route::new("shop.store.buy");
const ON_BOUGHT: Push<Json<String>> = Push::new("onBought");

/// `[modules.shop]` in the configuration.
#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    prices: BTreeMap<String, u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prices: BTreeMap::from([("sword".into(), 10), ("shield".into(), 7)]),
        }
    }
}

struct Shop;

/// The shop's state, built from its settings when the node starts.
struct Store {
    settings: Settings,
}

impl Store {
    async fn buy(
        self: Arc<Self>,
        ctx: Context,
        Json(req): Json<Buy>,
    ) -> Result<Json<Bought>, Error> {
        let uid = ctx.require_uid()?; // RK-401 unless logged in
        let Some(price) = self.settings.prices.get(&req.item) else {
            return Err(Error::custom("SHOP-UNKNOWN", "no such item"));
        };
        ctx.push(ON_BOUGHT, Json(req.item.clone()))?; // a typed push to this client
        tracing::info!(%uid, item = %req.item, "bought");
        Ok(Json(Bought {
            item: req.item,
            total: price * req.count,
        }))
    }
}

/// Middleware: logs every request of the module that takes longer than 100 ms.
struct Slow;

#[async_trait]
impl Middleware for Slow {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        let started = std::time::Instant::now();
        let route = ctx.route().to_string();
        let result = next.run(ctx, payload).await;
        if started.elapsed() > std::time::Duration::from_millis(100) {
            tracing::warn!(%route, "slow request");
        }
        result
    }
}

impl Module for Shop {
    fn name(&self) -> &str {
        "shop"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        let store = Arc::new(Store {
            settings: init.settings()?,
        });
        init.middleware(Slow); // around every shop handler
        init.method(&store, BUY, Store::buy).login_required();
        init.push_route(ON_BOUGHT);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(None)?; // ROOKERY_* environment overrides
    config.gateway.tcp = Some("127.0.0.1:3250".into());
    let server = rookery_demo::modules(Server::builder(config)) // login + rooms
        .module(Shop)
        .start()
        .await?;
    server.run_until(rookery::shutdown_signal()).await; // graceful on SIGINT/SIGTERM
    Ok(())
}
