//! A module's lifecycle and settings: `[settings]` read in `init` and through the app, `run`
//! started with the node and ended by its shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rookery::{
    async_trait, App, CancellationToken, Context, Error, Json, Module, ModuleInit, Server,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::common::*;

#[derive(serde::Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(default)]
struct GameSettings {
    motd: String,
}

#[derive(Default)]
struct Lifecycle {
    started: Notify,
    ended: AtomicBool,
}

struct Ticker(Arc<Lifecycle>);

#[async_trait]
impl Module for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        let settings: GameSettings = init.app_settings()?;
        init.handler("info.motd", move |_c: Context, (): ()| {
            let motd = settings.motd.clone();
            async move { Ok(Json(json!(motd))) }
        });
        Ok(())
    }

    async fn run(self: Arc<Self>, app: App, shutdown: CancellationToken) {
        let _ = app;
        self.0.started.notify_one();
        shutdown.cancelled().await;
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn app_settings_reach_modules_and_run_follows_the_node() {
    let mut cfg = config();
    cfg.settings.insert("motd".into(), "welcome".into());
    let life = Arc::new(Lifecycle::default());
    let server = Server::builder(cfg)
        .module(Ticker(life.clone()))
        .start()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, life.started.notified())
        .await
        .expect("run started with the node");
    let c = client(&server).await;
    let motd: Value = c.request_json("ticker.info.motd", json!({})).await.unwrap();
    assert_eq!(motd, json!("welcome"));
    assert_eq!(
        server.app().settings::<GameSettings>().unwrap().motd,
        "welcome"
    );
    assert!(!life.ended.load(Ordering::SeqCst));
    server.shutdown().await;
    assert!(
        life.ended.load(Ordering::SeqCst),
        "run ended by the shutdown"
    );
}
