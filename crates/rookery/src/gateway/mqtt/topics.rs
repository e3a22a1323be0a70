//! Topics and routes: `module/handler/method[/MSGID]`, and mqant's
//! `moduleType/HD_handler[/msgid]` through `[mqtt.mqant]`.

use std::collections::HashMap;

use crate::config::MqantConfig;
use crate::Error;

/// The topic mapping of a node.
pub(super) struct Topics {
    /// `moduleType/HD_handler` → route.
    routes: HashMap<String, String>,
    /// `moduleType` → `module.handler`.
    modules: HashMap<String, String>,
}

impl Topics {
    pub(super) fn new(cfg: &MqantConfig) -> Self {
        Self {
            routes: cfg.routes.clone().into_iter().collect(),
            modules: cfg.modules.clone().into_iter().collect(),
        }
    }

    /// The route a PUBLISH on `topic` is for, and whether it is a request (the topic has a
    /// msgid: the client waits for an answer on the same topic).
    pub(super) fn request(&self, topic: &str) -> Result<(String, bool), Error> {
        let parts: Vec<&str> = topic.split('/').collect();
        if let Some(handler) = parts.get(1).and_then(|h| h.strip_prefix("HD_")) {
            if parts.len() > 3 || handler.is_empty() {
                return Err(Error::bad_request(format!(
                    "mqant topic {topic:?}: moduleType/HD_handler[/msgid] expected"
                )));
            }
            let key = format!("{}/{}", parts[0], parts[1]);
            let route = match (self.routes.get(&key), self.modules.get(parts[0])) {
                (Some(route), _) => route.clone(),
                (None, Some(prefix)) => format!("{prefix}.{handler}"),
                (None, None) => {
                    return Err(Error::not_found(&format!(
                        "{key} (no [mqtt.mqant] mapping)"
                    )))
                }
            };
            return Ok((route, parts.len() == 3));
        }
        match parts.as_slice() {
            [m, h, f] | [m, h, f, _] if !m.is_empty() && !h.is_empty() && !f.is_empty() => {
                Ok((format!("{m}.{h}.{f}"), parts.len() == 4))
            }
            _ => Err(Error::bad_request(format!(
                "topic {topic:?}: module/handler/method[/MSGID] expected"
            ))),
        }
    }
}

/// True if a PUBLISH on `topic` waits for an answer (it names a msgid).
pub(super) fn wants_answer(topic: &str) -> bool {
    let n = topic.split('/').count();
    if is_mqant(topic) {
        n == 3
    } else {
        n == 4
    }
}

/// True for mqant's topic form, whose answers carry mqant's envelope.
pub(super) fn is_mqant(topic: &str) -> bool {
    topic
        .split('/')
        .nth(1)
        .is_some_and(|h| h.starts_with("HD_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        let mut cfg = MqantConfig::default();
        cfg.routes
            .insert("Chat/HD_Say".into(), "room.room.say".into());
        cfg.modules.insert("Login".into(), "connector.entry".into());
        Topics::new(&cfg)
    }

    #[test]
    fn native_and_mqant_topics_map_to_routes() {
        let t = topics();
        assert_eq!(
            t.request("room/room/join/7").unwrap(),
            ("room.room.join".into(), true)
        );
        assert_eq!(
            t.request("room/room/join").unwrap(),
            ("room.room.join".into(), false)
        );
        assert_eq!(
            t.request("Chat/HD_Say/1").unwrap(),
            ("room.room.say".into(), true)
        );
        assert_eq!(
            t.request("Login/HD_login").unwrap(),
            ("connector.entry.login".into(), false)
        );
        assert!(t.request("Shop/HD_buy/1").is_err(), "no mapping");
        assert!(t.request("a/b").is_err());
        assert!(t.request("a//c/1").is_err());
        assert!(t.request("a/b/c/d/e").is_err());
        assert!(wants_answer("Chat/HD_Say/1") && !wants_answer("Chat/HD_Say"));
        assert!(wants_answer("a/b/c/1") && !wants_answer("a/b/c"));
    }
}
