//! [`export_plugin!`](crate::export_plugin): registers a [`Plugin`](crate::Plugin) type as the component's `handler` export.
//!
//! The component model calls free functions (`init`, `on-request`, …); the plugin is a value.
//! The glue keeps that one value in a thread-local slot: `init` fills it, each phase borrows
//! it. A wasm instance is single-threaded and the host never calls it re-entrantly, so the
//! `RefCell` borrow can not conflict. The slot (like every global of the plugin) persists for
//! the instance's life, which with `isolation = "pooled"` spans many requests.

/// Exports a [`Plugin`](crate::Plugin) type as the component's `handler` interface.
///
/// Use it once, at the root of a `cdylib` crate. Built for `wasm32` it emits the
/// component's exports; built natively (`cargo test`) it only checks that the type is a
/// plugin, and tests drive it through [`testing::TestHost`](crate::testing::TestHost).
///
/// ```
/// use llm_gateway_plugin::{export_plugin, Error, Plugin};
///
/// struct Noop;
///
/// impl Plugin for Noop {
///     fn init(_config: &serde_json::Value) -> Result<Self, Error> {
///         Ok(Noop)
///     }
/// }
///
/// export_plugin!(Noop);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LlmGatewayPluginAdapter = $crate::__private::Adapter<$plugin>;
            $crate::__private::bindings::__llm_gateway_plugin_export_world!(
                __LlmGatewayPluginAdapter with_types_in $crate::__private::bindings
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            fn is_plugin<P: $crate::Plugin>() {}
            is_plugin::<$plugin>();
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    /// The generated `Guest` implementation for a plugin type.
    pub struct Adapter<P>(PhantomData<P>);

    #[cfg(target_arch = "wasm32")]
    pub use crate::host::bindings;

    #[cfg(target_arch = "wasm32")]
    mod glue {
        use std::any::Any;
        use std::cell::RefCell;

        use super::bindings::exports::llm_gateway::plugin::handler::Guest;
        use super::bindings::llm_gateway::plugin::types;
        use super::Adapter;
        use crate::{Completion, Decision, Outcome, Plugin, Request, Response, Usage};

        thread_local! {
            static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        }

        fn with_instance<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
            INSTANCE.with(|slot| {
                let mut slot = slot.borrow_mut();
                let plugin = slot
                    .as_mut()
                    .and_then(|p| p.downcast_mut::<P>())
                    .expect("the host called a phase before a successful init");
                f(plugin)
            })
        }

        /// Sends a panic's message to the gateway's log before the trap, which carries none.
        fn install_panic_hook() {
            std::panic::set_hook(Box::new(|info| {
                crate::log::error(&format!("plugin panicked: {info}"));
            }));
        }

        impl<P: Plugin> Guest for Adapter<P> {
            fn init(config: String) -> Result<(), String> {
                install_panic_hook();
                let config = if config.trim().is_empty() {
                    serde_json::Value::Object(serde_json::Map::new())
                } else {
                    serde_json::from_str(&config).map_err(|e| format!("config is not JSON: {e}"))?
                };
                let plugin = P::init(&config).map_err(|e| e.to_string())?;
                INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
                Ok(())
            }

            fn on_request() -> types::Decision {
                match with_instance(|p: &mut P| p.on_request(&mut Request::handle_mut())) {
                    Decision::Continue => types::Decision::Continue,
                    Decision::Deny(d) => types::Decision::Deny(types::Denial {
                        status: d.status,
                        message: d.message,
                        retry_after_seconds: d.retry_after_seconds,
                    }),
                }
            }

            fn on_response() {
                with_instance(|p: &mut P| p.on_response(&mut Response::handle_mut()))
            }

            fn on_complete(c: types::Completion) {
                let completion = Completion {
                    status: c.status,
                    outcome: match c.outcome {
                        types::Outcome::Ok => Outcome::Ok,
                        types::Outcome::UpstreamError => Outcome::UpstreamError,
                        types::Outcome::Denied => Outcome::Denied,
                        types::Outcome::Rejected => Outcome::Rejected,
                        types::Outcome::UpstreamFailed => Outcome::UpstreamFailed,
                        types::Outcome::ClientAborted => Outcome::ClientAborted,
                    },
                    usage: Usage {
                        input_tokens: c.usage.input_tokens,
                        output_tokens: c.usage.output_tokens,
                        cache_read_tokens: c.usage.cache_read_tokens,
                        cache_write_tokens: c.usage.cache_write_tokens,
                    },
                    latency_ms: c.latency_ms,
                    time_to_first_token_ms: c.time_to_first_token_ms,
                    request_bytes: c.request_bytes,
                    response_bytes: c.response_bytes,
                    backend: c.backend,
                    model_served: c.model_served,
                    denied_by: c.denied_by,
                };
                with_instance(|p: &mut P| p.on_complete(&completion))
            }
        }
    }
}
