//! Typed routes and pushes: a route declared once as a constant names its argument and result
//! types, so the handler registered for it and every RPC call to it are checked by the compiler.
//! Plain string routes keep working everywhere a typed one is accepted.
//!
//! ```
//! use rookery::{Json, Push, Route};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct JoinReq { room: String }
//! # #[derive(serde::Serialize, serde::Deserialize)] struct JoinResp { members: Vec<String> }
//! # #[derive(serde::Serialize)] struct Joined { uid: String }
//! pub const JOIN: Route<Json<JoinReq>, Json<JoinResp>> = Route::new("room.room.join");
//! pub const ON_JOIN: Push<Json<Joined>> = Push::new("onJoin");
//! ```
//!
//! A call with the wrong argument type does not compile:
//!
//! ```compile_fail
//! use rookery::{App, Json, Route, Target};
//! const JOIN: Route<Json<String>, Json<u32>> = Route::new("room.room.join");
//! async fn call(app: &App) {
//!     // The route takes `Json<String>`, not `Json<u64>`.
//!     let _: Result<Json<u32>, _> = app.rpc().call(Target::Module("room".into()), JOIN, Json(7u64)).await;
//! }
//! ```
//!
//! Nor does a handler whose result is not the route's:
//!
//! ```compile_fail
//! use std::sync::Arc;
//! use rookery::{Context, Error, Json, ModuleInit, Route};
//! const JOIN: Route<Json<String>, Json<u32>> = Route::new("room.room.join");
//! fn init(init: &mut ModuleInit<'_>) {
//!     init.handler(JOIN, |_ctx: Context, Json(s): Json<String>| async move { Ok(Json(s)) });
//! }
//! ```

use std::fmt;
use std::marker::PhantomData;

/// A route (`module.handler.method`) whose handler takes `A` and answers `R` (payload types:
/// [`crate::Json`], [`crate::Proto`], [`crate::Msg`], [`crate::Raw`] or `()`).
pub struct Route<A, R> {
    name: &'static str,
    types: PhantomData<fn(A) -> R>,
}

impl<A, R> Route<A, R> {
    /// The route named `name` (the full `module.handler.method`).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }

    /// The full route name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

// Written by hand: derived impls would require `A` and `R` to be `Clone`/`Copy`/`Debug`.
impl<A, R> Clone for Route<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for Route<A, R> {}
impl<A, R> fmt::Debug for Route<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({})", self.name)
    }
}

/// A push route whose payload is `T`.
pub struct Push<T> {
    name: &'static str,
    types: PhantomData<fn(T)>,
}

impl<T> Push<T> {
    /// The push route named `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }

    /// The push route's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> AsRef<str> for Push<T> {
    fn as_ref(&self) -> &str {
        self.name
    }
}

impl<T> Clone for Push<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Push<T> {}
impl<T> fmt::Debug for Push<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Push({})", self.name)
    }
}

/// A route that takes `A` and answers `R`: a [`Route<A, R>`] (checked), or a string (any types).
pub trait RouteName<A, R> {
    /// The route's name as given (a string registered by a module may omit the module part).
    fn route_name(&self) -> &str;
    /// True if the name is the full `module.handler.method` (typed routes always are).
    fn is_full(&self) -> bool;
}

impl<A, R> RouteName<A, R> for Route<A, R> {
    fn route_name(&self) -> &str {
        self.name
    }
    fn is_full(&self) -> bool {
        true
    }
}

impl<A, R> RouteName<A, R> for &str {
    fn route_name(&self) -> &str {
        self
    }
    fn is_full(&self) -> bool {
        false
    }
}

impl<A, R> RouteName<A, R> for &String {
    fn route_name(&self) -> &str {
        self
    }
    fn is_full(&self) -> bool {
        false
    }
}

/// A push route carrying `T`: a [`Push<T>`] (checked), or a string (any payload).
pub trait PushName<T> {
    /// The push route's name.
    fn push_name(&self) -> &str;
}

impl<T> PushName<T> for Push<T> {
    fn push_name(&self) -> &str {
        self.name
    }
}

impl<T> PushName<T> for &str {
    fn push_name(&self) -> &str {
        self
    }
}

impl<T> PushName<T> for &String {
    fn push_name(&self) -> &str {
        self
    }
}
